#!/usr/bin/env bash
# Installs, from Debian 12's own packages, what `packaging/build-stub.sh arm64` needs to build a
# static aarch64 stub on an x86_64 host, and qemu to run it:
#   rustc-web                 a Rust compiler (/usr/bin/rustc, >= 1.88) whose std is a Debian package
#   libstd-rust-web-dev:arm64 the aarch64 std rlibs for it (multiarch: adds the arm64 architecture)
#   gcc-aarch64-linux-gnu     C cross compiler (zstd-sys) and linker
#   libc6-dev-arm64-cross     aarch64 glibc, with the static libc.a and rcrt1.o for -static-pie
#   qemu-user-static          qemu-aarch64-static, to run and test the aarch64 stub here
# The machine's rustup toolchain is left as it is: it stays first on PATH, and build-stub.sh points
# cargo at /usr/bin/rustc only for the arm64 build. No recommends are installed (no cargo-web,
# which would put a second cargo in /usr/bin), and nothing is ever removed: if apt would remove a
# package (say qemu-utils, newer here than Debian 12's qemu), the script stops before installing.
#
#   packaging/cross-setup.sh           quiet; prints what it installs; a fast no-op when all is there
#   packaging/cross-setup.sh --check   exit 0 if everything is installed, 1 if not; installs nothing
set -euo pipefail
case "${1:-}" in
  ''|--check) ;;
  *) echo "usage: packaging/cross-setup.sh [--check]" >&2; exit 2 ;;
esac

packages=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "ii " ]; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  [ "${1:-}" = --check ] || echo "cross-setup: the arm64 toolchain is installed"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "cross-setup: missing: ${missing[*]}" >&2
  exit 1
fi

if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
  echo "error: cross-setup.sh installs Debian packages and needs Debian 12 with apt-get" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "error: cross-setup.sh needs root (apt-get) to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
quietly() {
  # Quiet unless it fails; then show what apt said.
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: failed: $*" >&2
    exit 1
  fi
}

if ! dpkg --print-foreign-architectures | grep -x arm64 >/dev/null; then
  echo "cross-setup: adding the dpkg architecture arm64 (for libstd-rust-web-dev:arm64)"
  quietly dpkg --add-architecture arm64
fi
echo "cross-setup: apt-get update"
if ! "${sudo[@]}" apt-get update -q >"$log" 2>&1; then
  # A third-party source that can't be reached fails the update; Debian's lists may still be fine.
  grep -E '^(E|W):' "$log" >&2 || true
  echo "cross-setup: warning: apt-get update reported errors; trying the install anyway" >&2
fi

install=(apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}")
# Dry run first: refuse anything that would remove an installed package.
quietly "${install[@]}" -s
removes="$(grep -E '^(Remv|Purg) ' "$log" | cut -d' ' -f2 | tr '\n' ' ' || true)"
if [ -n "$removes" ]; then
  echo "error: installing ${missing[*]} would remove: $removes" >&2
  echo "error: nothing was installed; resolve this by hand" >&2
  exit 1
fi
new="$(grep -E '^Inst ' "$log" | cut -d' ' -f2 | tr '\n' ' ' || true)"
count="$(grep -Ec '^Inst ' "$log" || true)"
# An 'Inst' line with '[old version]' upgrades a package already here (say libc6, to match libc6:arm64).
upgrades="$(grep -E '^Inst [^ ]+ \[' "$log" | cut -d' ' -f2 | tr '\n' ' ' || true)"
quietly "${install[@]}" --print-uris -qq
bytes="$(awk '$1 ~ /^'"'"'/ { s += $3 } END { printf "%d", s }' "$log")"
echo "cross-setup: installing $count packages ($((bytes / 1048576)) MiB to download): $new"
if [ -n "$upgrades" ]; then
  echo "cross-setup: of these, upgraded from the installed version: $upgrades"
fi
quietly "${install[@]}"

rustc_version="$(/usr/bin/rustc --version)"
echo "cross-setup: done: $rustc_version, $(aarch64-linux-gnu-gcc --version | sed -n 1p), $(qemu-aarch64-static --version | sed -n 1p)"
