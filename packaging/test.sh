#!/usr/bin/env bash
# Runs kubeferry's whole test suite: installs what the tests use from Debian's packages when
# it is missing, then `cargo test --workspace`. Arguments go to cargo test, e.g.
#   packaging/test.sh --test bundle        only the bundle end-to-end tests
#   packaging/test.sh -p kubeferry-installer   only the installer's unit tests
#
# The tests run the real tools: minisign (interoperability of keys and signatures), GNU time
# (peak memory), tar and gzip (fixtures), Debian's docker-registry and skopeo (the bundled
# registry and the registries images are pulled from), htpasswd (a registry with
# authentication), qemu-user-static and the cross toolchain (the arm64 stub). Mounting a small tmpfs for the full-disk test needs
# root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v minisign >/dev/null || need+=(minisign)
[ -x /usr/bin/time ] || need+=(time)
command -v gzip >/dev/null || need+=(gzip)
command -v tar >/dev/null || need+=(tar)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
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

exec cargo test --workspace --no-fail-fast "$@"
