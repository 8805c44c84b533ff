#!/usr/bin/env bash
# Installs what kib needs to build, run and test on Debian 12: the host tools it calls
# (qemu-img, blkid, losetup, unshare, fstrim, sfdisk, mkfs), what the base-image script uses
# (mmdebstrap, mtools, dosfstools), qemu-user-static and arch-test for foreign-architecture
# images (an arm64 base image and arm64 builds on an amd64 host; kib registers the binfmt_misc
# handler itself, so binfmt-support is not needed) and libclang for loopdev-3's bindgen.
# Idempotent and quiet when everything is there already.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (apt-get install)" >&2; exit 1; }

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# dpkg-dev .. python3 build the test fixture mirror (testdata/mirror/make-fixtures.sh); rpm and
# createrepo-c its RPM side (make-rpm-fixtures.sh: rpmbuild, rpmsign, rpmkeys, createrepo_c), which
# testdata/el/make-el-image.sh's fixture images use too.
for pkg in mmdebstrap fdisk dosfstools mtools e2fsprogs util-linux mount libclang-dev pkg-config ca-certificates \
           qemu-user-static arch-test dpkg-dev apt-utils gnupg gpgv umoci skopeo python3 python3-venv rpm createrepo-c openssl; do
  have_pkg "$pkg" || need+=("$pkg")
done
# Disk growth (disk.size) grows xfs and btrfs roots with their own tools.
for pkg in xfsprogs btrfs-progs; do
  have_pkg "$pkg" || need+=("$pkg")
done
# LVM images (lvm2's reports and metadata-only commands, never activation) and SELinux labels (setfiles,
# matchpathcon, getfattr); testdata/lvm/make-lvm-image.sh builds the fixtures with them.
for pkg in lvm2 policycoreutils selinux-utils attr; do
  have_pkg "$pkg" || need+=("$pkg")
done
# python3-venv: scripts/k8s-validators.sh makes a venv for PyPI's kubernetes-validate (tests/matrix.rs).
have_pkg python3-venv || need+=(python3-venv)
# pigz: parallel gzip for the gce and raw.gz formats (kib falls back to gzip, on one CPU, without it).
# hyperfine: scripts/bench.sh.
for pkg in pigz hyperfine; do
  have_pkg "$pkg" || need+=("$pkg")
done
# xmllint validates OVA descriptors against DMTF's OVF schema in the tests (libxml2-utils).
have_pkg libxml2-utils || need+=(libxml2-utils)
# g++: libfuzzer-sys compiles libFuzzer (C++) for scripts/fuzz.sh.
have_pkg g++ || need+=(g++)
# podman and runc: scripts/make-container-image.sh builds kib's container image, and
# tests/container.rs runs builds inside it. Only when podman is missing (a host with podman from
# elsewhere keeps its own); runc because Debian's podman would otherwise pull in crun as well.
have_cmd podman || need+=(podman runc)
# catatonit: `podman kube play` (tests/matrix.rs) builds its pod's infra (pause) image from it.
have_pkg catatonit || need+=(catatonit)
# podman's default network on Debian 12 is CNI: without the plugins `podman run` has no network.
have_pkg containernetworking-plugins || need+=(containernetworking-plugins)
# qemu-img: keep the preinstalled one (bookworm-backports' 10.x on these machines); install
# Debian's only when there is none. Never install qemu-system-x86 here: it replaces qemu-utils.
have_cmd qemu-img || need+=(qemu-utils)

if [ "${#need[@]}" -gt 0 ]; then
  echo "deps.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu-system-x86_64 for `kib check --boot` (tests/boot.rs) and scripts/boot-test.sh. Debian
# bookworm's qemu-system-x86 (7.2) would replace the preinstalled qemu-utils 10.0 from
# bookworm-backports, and qemu-img would disappear: both come from bookworm-backports, together.
if ! have_cmd qemu-system-x86_64; then
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
  fi
  echo "deps.sh: installing qemu-system-x86 and qemu-utils from bookworm-backports" >&2
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils seabios ipxe-qemu >/dev/null
  qemu-img --version >/dev/null || { echo "deps.sh: qemu-img no longer works after installing qemu-system-x86" >&2; exit 1; }
fi
# The SBOM standards' own reference tools, from PyPI, for the SBOM tests (tests/common/sbom_schema.rs
# runs scripts/lib/sbom-validate.py with this venv's python): spdx-tools (pyspdxtools, the SPDX
# project's parser and validator) and cyclonedx-python-lib (CycloneDX's JsonStrictValidator). Pinned,
# in a venv under /var/cache/kib keyed by the pins; KIB_SBOM_VALIDATORS points the tests elsewhere.
sbom_pins="spdx-tools==0.8.5 cyclonedx-python-lib[json-validation]==11.12.0"
sbom_venv=/var/cache/kib/sbom-validators/$(printf '%s' "$sbom_pins" | sha256sum | cut -c1-12)
if [ ! -e "$sbom_venv/.complete" ]; then
  echo "deps.sh: installing the SBOM validators ($sbom_pins) into $sbom_venv" >&2
  rm -rf "$sbom_venv"
  /usr/bin/python3 -m venv "$sbom_venv"
  # shellcheck disable=SC2086 # the pins are words
  "$sbom_venv/bin/pip" install -q --disable-pip-version-check $sbom_pins || { rm -rf "$sbom_venv"; exit 1; }
  touch "$sbom_venv/.complete"
fi
ln -sfn "$sbom_venv" /var/cache/kib/sbom-validators/current

if ! have_cmd cargo; then
  for c in "$HOME/.cargo/bin/cargo" /root/.cargo/bin/cargo /usr/local/cargo/bin/cargo; do
    [ -x "$c" ] && { echo "deps.sh: cargo is at $c; put its folder on PATH" >&2; exit 1; }
  done
  echo "deps.sh: no Rust toolchain (cargo) found; install one with rustup" >&2
  exit 1
fi
