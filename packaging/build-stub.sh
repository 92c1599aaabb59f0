#!/usr/bin/env bash
# Builds the static installer stub for an architecture and places it where `kubeferry build`
# looks for it: target/stubs/kubeferry-stub-ARCH and beside target/{debug,release}/kubeferry.
#
#   packaging/build-stub.sh [ARCH]     ARCH: amd64 or arm64 (default: this host's)
#
# amd64 uses the rustup toolchain; arm64 on an x86_64 host uses Debian's cross toolchain and
# runs packaging/cross-setup.sh first when that is missing (as root; KUBEFERRY_NO_CROSS_SETUP=1
# only prints the hint). Test an arm64 stub here with qemu-aarch64-static.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-$(uname -m)}"
case "$arch" in
  amd64|x86_64) arch=amd64; triple=x86_64-unknown-linux-gnu ;;
  arm64|aarch64) arch=arm64; triple=aarch64-unknown-linux-gnu ;;
  *) echo "error: unknown architecture '$arch' (expected amd64 or arm64)" >&2; exit 2 ;;
esac

# arm64 on an x86_64 host: rustup can't fetch the aarch64 std here, so that one build uses
# Debian 12's toolchain (packaging/cross-setup.sh installs it): rustc-web's /usr/bin/rustc,
# whose aarch64 std comes from libstd-rust-web-dev:arm64, driven by the same cargo, with
# aarch64-linux-gnu-gcc as the C compiler (zstd-sys) and linker and its static glibc.
if [ "$arch" = arm64 ] && [ "$(uname -m)" = x86_64 ]; then
  deb_rustc=/usr/bin/rustc
  cross_ready() {
    [ -x "$deb_rustc" ] && command -v aarch64-linux-gnu-gcc >/dev/null &&
      [ -e /usr/aarch64-linux-gnu/lib/libc.a ] &&
      compgen -G "$("$deb_rustc" --print target-libdir --target "$triple")/libstd-*.rlib" >/dev/null
  }
  if ! cross_ready; then
    if [ "$(id -u)" -eq 0 ] && [ -z "${KUBEFERRY_NO_CROSS_SETUP:-}" ]; then
      echo "build-stub: the arm64 toolchain is missing; running packaging/cross-setup.sh" >&2
      packaging/cross-setup.sh >&2
    fi
    if ! cross_ready; then
      echo "error: the Debian arm64 cross toolchain (rustc-web, libstd-rust-web-dev:arm64," >&2
      echo "       gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) is not installed" >&2
      echo "hint: sudo packaging/cross-setup.sh" >&2
      exit 1
    fi
  fi
  export RUSTC="$deb_rustc"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
elif ! rustup target list --installed 2>/dev/null | grep -x "$triple" >/dev/null; then
  echo "error: the Rust target $triple is not installed" >&2
  echo "hint: rustup target add $triple (and a C cross compiler for zstd)" >&2
  exit 1
fi

# A separate target directory: the static flags must not rebuild the workspace's own
# artifacts, and a build here never waits on the lock of a running 'cargo test'.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --profile stub --target "$triple" -p kubeferry-stub --target-dir target/stub-build
built="target/stub-build/$triple/stub/kubeferry-stub"

mkdir -p target/stubs
install -m 0755 "$built" "target/stubs/kubeferry-stub-$arch"
for profile in debug release; do
  if [ -d "target/$profile" ]; then
    install -m 0755 "$built" "target/$profile/kubeferry-stub-$arch"
  fi
done
echo "target/stubs/kubeferry-stub-$arch"
