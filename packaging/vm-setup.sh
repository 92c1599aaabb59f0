#!/usr/bin/env bash
# Installs, from Debian 12's packages, what the air-gapped VM test (tests/e2e/airgap-vm.sh)
# needs: qemu-system-x86 (the VM), debootstrap (the guest's root), e2fsprogs (mkfs.ext4 -d,
# debugfs) and qemu-utils (qemu-img, the root disk's overlay).
#
# These machines come with qemu-utils from bookworm-backports, newer than bookworm's qemu; a plain
# `apt-get install qemu-system-x86` would install bookworm's 7.2 and remove qemu-utils. When the
# installed qemu-utils is a backport, the backports suite is added to apt's sources (when missing)
# and qemu-system-x86 installed at exactly qemu-utils' version; nothing else is upgraded, and the
# script stops before installing if apt would remove any package.
#
#   packaging/vm-setup.sh           prints what it installs; a fast no-op when all is there
#   packaging/vm-setup.sh --check   exit 0 if everything is installed, 1 if not; installs nothing
set -euo pipefail
case "${1:-}" in
  ''|--check) ;;
  *) echo "usage: packaging/vm-setup.sh [--check]" >&2; exit 2 ;;
esac

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null || missing+=(e2fsprogs)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
if [ "${#missing[@]}" -eq 0 ]; then
  [ "${1:-}" = --check ] || echo "vm-setup: qemu-system-x86, debootstrap, e2fsprogs and qemu-utils are installed"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "vm-setup: missing: ${missing[*]}" >&2
  exit 1
fi
[ "$(id -u)" = 0 ] || { echo "error: vm-setup installs packages: run it as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

packages=()
utils="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
for p in "${missing[@]}"; do
  if [ "$p" = qemu-system-x86 ] && [[ "$utils" == *bpo12* ]]; then
    # qemu-system-x86 at the installed qemu-utils' version, from bookworm-backports.
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "vm-setup: adding bookworm-backports to apt's sources (/etc/apt/sources.list.d/bookworm-backports.sources)"
      cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    packages+=("qemu-system-x86=$utils" "qemu-system-data=$utils" "qemu-system-common=$utils" seabios/bookworm-backports)
  else
    packages+=("$p")
  fi
done
echo "vm-setup: installing ${packages[*]}"
apt-get update -qq
# Refuse to remove anything: a simulated install first.
removed="$(apt-get install -s --no-install-recommends "${packages[@]}" | sed -n 's/^Remv \([^ ]*\).*/\1/p' | tr '\n' ' ')"
if [ -n "$removed" ]; then
  echo "error: installing ${packages[*]} would remove: $removed" >&2
  echo "hint: install a qemu-system-x86 of the same version as qemu-utils by hand (docs/airgap-vm.md)" >&2
  exit 1
fi
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "vm-setup: installed"
