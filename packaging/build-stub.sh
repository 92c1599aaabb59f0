#!/usr/bin/env bash
# Builds the static installer stub for an architecture and places it where `kubeferry build`
# looks for it: target/stubs/kubeferry-stub-ARCH and beside target/{debug,release}/kubeferry.
#
#   packaging/build-stub.sh [ARCH]     ARCH: amd64 (default: this host's)
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-$(uname -m)}"
case "$arch" in
  amd64|x86_64) arch=amd64; triple=x86_64-unknown-linux-gnu ;;
  arm64|aarch64) arch=arm64; triple=aarch64-unknown-linux-gnu ;;
  *) echo "error: unknown architecture '$arch' (expected amd64 or arm64)" >&2; exit 2 ;;
esac
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
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
