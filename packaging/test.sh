#!/usr/bin/env bash
# Runs kubeferry's test suite: installs what the tests use from Debian's packages when it is
# missing, then `cargo test --workspace`, then the air-gapped VM test (the example cluster image
# with real Kubernetes built from Debian's sources, its bundle installed, powered off twice in the
# middle of the install, resumed, checked and purged in a VM that has no network device;
# docs/airgap-vm.md), with containerd, then again with docker as the runtime.
#   packaging/test.sh                      the cargo tests, then the VM tests (37-39 minutes in all
#                                          on a fresh clone with 2 cores, measured; docs/benchmarks.md)
#   packaging/test.sh --fast               only the cargo tests (about 10 minutes)
#   packaging/test.sh --vm                 only the VM test
#   packaging/test.sh --fast --test bundle cargo test's arguments: only those cargo tests, e.g.
#   packaging/test.sh --fast -p kubeferry-installer   only the installer's unit tests
# The VM test builds the example rootfs into target/example-rootfs-amd64 with the step cache of
# packaging/example-rootfs/build.sh ($KUBEFERRY_EXAMPLE_CACHE, default target/example-cache), and
# keeps its VM's files in $KUBEFERRY_VM_DIR (default target/airgap-vm): a clean checkout
# builds everything from Debian's packages, a second run reuses what did not change.
#
# The tests run the real tools: minisign (interoperability of keys and signatures), GNU time
# (peak memory), tar and gzip (fixtures), Debian's docker-registry and skopeo (the bundled
# registry and the registries images are pulled from), htpasswd (a registry with
# authentication), libdevmapper (for Debian's dockerd, fetched with apt-get download, not installed), qemu-user-static and the cross toolchain (the arm64 stub). Mounting a small tmpfs for the full-disk test needs
# root.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_tests=1 vm=1
case "${1:-}" in
  --all) shift ;;
  --fast) vm=0; shift ;;
  --vm) cargo_tests=0; shift ;;
esac
# cargo's arguments select some cargo tests: those only.
[ $# -eq 0 ] || vm=0

vm_test() {
  local t0=$SECONDS
  packaging/vm-setup.sh
  local rootfs=target/example-rootfs-amd64
  packaging/example-rootfs/build.sh amd64 "$rootfs"
  KUBEFERRY_ROOTFS="$PWD/$rootfs" KUBEFERRY_VM_DIR="${KUBEFERRY_VM_DIR:-$PWD/target/airgap-vm}" \
    tests/e2e/airgap-vm.sh
  echo "test.sh: the air-gapped VM test passed in $(( SECONDS - t0 )) s" >&2
  # Again with docker as the runtime: the same image with Debian's docker.io in cri/, a guest
  # with what Debian's dockerd needs of the host (libdevmapper; apparmor_parser, since the
  # guest's kernel enforces AppArmor and docker loads a profile for every container).
  t0=$SECONDS
  rm -rf "$rootfs-docker"
  packaging/example-rootfs/with-docker.sh "$rootfs" "$rootfs-docker"
  KUBEFERRY_ROOTFS="$PWD/$rootfs-docker" KUBEFERRY_VM_DIR="${KUBEFERRY_VM_DIR:-$PWD/target/airgap-vm}-docker" \
    KUBEFERRY_VM_GUEST_EXTRA=libdevmapper1.02.1,apparmor tests/e2e/airgap-vm.sh
  echo "test.sh: the air-gapped VM test with docker passed in $(( SECONDS - t0 )) s" >&2
}
if [ "$cargo_tests" = 0 ]; then
  vm_test
  exit
fi

need=()
command -v minisign >/dev/null || need+=(minisign)
[ -x /usr/bin/time ] || need+=(time)
command -v gzip >/dev/null || need+=(gzip)
command -v tar >/dev/null || need+=(tar)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# Debian's dockerd, which the docker runtime test runs, is linked against libdevmapper.
ldconfig -p | grep -e 'libdevmapper\.so\.1\.02\.1 ' >/dev/null || need+=(libdevmapper1.02.1)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The arm64 stub is cross-built with Debian's toolchain and run under qemu-user.
packaging/cross-setup.sh --check >/dev/null 2>&1 || packaging/cross-setup.sh
if [ "$(id -u)" != 0 ]; then
  echo "warning: not root: the full-disk test mounts a tmpfs and will fail" >&2
fi

cargo test --workspace --no-fail-fast "$@"
[ "$vm" = 0 ] || vm_test
