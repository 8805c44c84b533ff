#!/usr/bin/env bash
# Test fixture: plants hostile symlinks in an image tree, all aimed at a bait folder on the host.
#
# Usage: plant.sh TREE HOST
#   TREE  the folder that becomes the image's root filesystem (mkfs.ext4 -d TREE)
#   HOST  a folder on the host, filled here with bait files ("HOST-BAIT ..."); a correct kib
#         neither writes, truncates, deletes nor reads anything under it
#
# Every link below names HOST by its absolute host path, either directly (`/etc/containerd ->
# HOST/etc`) or climbing out of the image with `..` (`/etc/resolv.conf -> ../../../..HOST/passwd`).
# Resolved with the image as `/`, as kib must resolve them, each lands at the image path HOST/...;
# where a step needs that folder to exist, the tree has it (the "inside counterpart"), with its own
# contents that sysprep is expected to clean. tests/hostile.rs lists what each link attacks.
set -euo pipefail
TREE=$1
HOST=$(readlink -f "$2")
H=${HOST#/}                       # HOST without its leading slash
UP=../../../../../../../../../..  # more `..` than any link below is deep

mkdir -p "$HOST"/{etc,bin,ssh,tmp,log,lists,dpkg,doc}
bait() { printf 'HOST-BAIT %s\n' "$2" > "$HOST/$1"; }
bait passwd passwd; bait policy policy-rc.d; bait machine-id machine-id; bait history history
bait authorized_keys authorized_keys; bait hosts hosts; bait hostname hostname; bait rules net-rules
bait ssh/ssh_host_rsa_key ssh-host-key; bait tmp/keep tmp; bait log/syslog log; bait log/auth.log.1 rotated-log
bait lists/deb.debian.org_dists_bookworm_InRelease apt-list
printf 'Package: host-bait-package\nStatus: install ok installed\nVersion: 6.6.6\nArchitecture: amd64\n\n' > "$HOST/dpkg/status"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: HOST-BAIT-Licence\n' > "$HOST/doc/copyright"

cd "$TREE"
mkdir -p etc usr/sbin usr/share/doc var/lib/apt var/log tmp root/.ssh etc/udev/rules.d opt
# The inside counterparts: where the links resolve when the image is `/`.
mkdir -p "$H"/{etc,bin,ssh,tmp,lists,dpkg,doc}
echo "inside ssh host key" > "$H/ssh/ssh_host_ed25519_key"
echo "inside tmp file" > "$H/tmp/inside"
echo "inside apt list" > "$H/lists/inside_InRelease"
printf 'Package: tinypkg\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n' > "$H/dpkg/status"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: Inside-Licence\n' > "$H/doc/copyright"

# Chroot session: set aside and put back, never written through.
ln -s "$UP/$H/passwd" etc/resolv.conf
ln -s "$HOST/policy" usr/sbin/policy-rc.d
# Steps: file, sysctl, kernel-modules and download write through folder links.
ln -s "$HOST/etc" etc/containerd
ln -s "$UP/$H/etc" etc/sysctl.d
ln -s "$HOST/etc" etc/modules-load.d
mkdir -p usr/local && ln -s "$HOST/bin" usr/local/bin
# Sysprep: truncations, deletions and folder emptying.
ln -s "$HOST/machine-id" etc/machine-id
ln -s "$HOST/ssh" etc/ssh
ln -s "$HOST/authorized_keys" root/.ssh/authorized_keys
ln -s "$HOST/history" root/.bash_history
ln -s "$HOST/tmp" var/tmp
ln -s "$HOST/tmp" tmp/escape
ln -s "$HOST/log/syslog" var/log/syslog
ln -s "$HOST/log/auth.log.1" var/log/auth.log.1
ln -s "$HOST/log" var/log/nested
ln -s "$HOST/lists" var/lib/apt/lists
ln -s "$HOST/rules" etc/udev/rules.d/70-persistent-net.rules
ln -s "$HOST/hosts" etc/hosts
ln -s "$UP/$H/hostname" etc/hostname
# The BOM and inspect: what kib reads about the image.
mkdir -p var/lib && ln -s "$HOST/dpkg" var/lib/dpkg
ln -s "$HOST/doc" usr/share/doc/tinypkg
