#!/usr/bin/env bash
# The demo: builds kubeferry and its static stub, an example cluster rootfs made of Debian's
# real containerd and runc, and a signed bundle from it, then shows the bundle at work the way an
# operator meets it: checked from outside (minisign, sha256sum), run, verified, listed,
# extracted, and the extracted runtime run.
#
#   packaging/demo.sh
#
# Runs on a fresh Debian 12 machine with the Rust toolchain; installs what it uses from
# Debian's packages when missing (minisign; a C compiler and libc6-dev for the static stub).
# Everything it writes is under target/ (git-ignored): target/example-rootfs,
# target/demo/keys (a demo key pair, made once and kept), target/demo/dist, target/demo/extracted.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

NAME=example
VERSION=v1.20.2
ARCH=amd64
key=target/demo/keys/demo
dist=target/demo/dist
extracted=target/demo/extracted
bundle="$dist/$NAME-$VERSION-linux-$ARCH.run"
kubeferry=target/release/kubeferry

started=$SECONDS
step_started=
# step HEADING: ends the step before (printing how long it took) and starts the next.
step() {
  if [ -n "$step_started" ]; then
    printf '    (%d s)\n' "$((SECONDS - step_started))"
  fi
  step_started=$SECONDS
  printf '\n==> %s\n' "$*"
}
# run CMD...: prints the command, then runs it.
run() {
  printf '$ %s\n' "$*"
  "$@"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- what the demo needs --------------------------------------------------------------------------

step "checking what the demo needs"
need=()
command -v minisign >/dev/null || need+=(minisign)
command -v cc >/dev/null || need+=(gcc)
# The stub is linked statically against glibc: libc.a comes with libc6-dev.
dpkg-query -W -f='${Status}\n' libc6-dev 2>/dev/null | grep -e 'ok installed' >/dev/null || need+=(libc6-dev)
for tool in cargo rustup apt-get dpkg-deb tar gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed" >&2; exit 1; }
done
if [ "${#need[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: install ${need[*]} (as root: apt-get install ${need[*]})" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "installing ${need[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
echo "ok: minisign $(minisign -v 2>&1 | awk '{print $2; exit}'), $(cargo --version)"

# --- build -----------------------------------------------------------------------------------------

step "building kubeferry (cargo build --release)"
run cargo build --quiet --release -p kubeferry-builder

step "building the static stub for $ARCH"
run packaging/build-stub.sh "$ARCH"

step "generating the example rootfs from Debian's packages"
run packaging/example-rootfs/mini.sh target/example-rootfs
echo "rootfs: $(du -sh --apparent-size target/example-rootfs | cut -f1) ($(du -sh --apparent-size target/example-rootfs/arm64 | cut -f1) of it in arm64/, which the $ARCH bundle leaves out)"

step "the demo signing key"
if [ -f "$key.key" ] && [ -f "$key.pub" ]; then
  echo "using the existing key pair $key.key / $key.pub"
else
  mkdir -p "$(dirname "$key")"
  rm -f "$key.key" "$key.pub"
  run "$kubeferry" keygen --out "$key"
fi

step "building the signed bundle"
rm -rf "$dist"
# The miniature carries no container image (its registry/ is empty, see its README.md): build
# without pulling the images it names.
run "$kubeferry" build target/example-rootfs --name "$NAME" --version "$VERSION" --arch "$ARCH" \
  --no-pull --allow-missing-images --key "$key.key" -o "$dist"
ls -l "$dist"

# --- show it --------------------------------------------------------------------------------------

step "what the bundle holds (kubeferry inspect, first 25 lines)"
run "$kubeferry" inspect "$bundle" >"$tmp/inspect"
head -n 25 "$tmp/inspect"

step "checking it from outside, with minisign and sha256sum"
run minisign -Vm "$bundle" -p "$key.pub"
(cd "$dist" && run sha256sum -c "$(basename "$bundle").sha256")

step "running it: the summary"
run "$bundle"

step "verifying every byte and the signature, trusting the demo key"
run "$bundle" verify --trusted-key "$key.pub"

step "listing it (first 10 lines)"
run "$bundle" list --trusted-key "$key.pub" >"$tmp/list"
head -n 10 "$tmp/list"
echo "... $(wc -l <"$tmp/list") lines"

step "extracting it"
run "$bundle" extract --to "$extracted" --force --trusted-key "$key.pub"
run ls -l "$extracted" "$extracted/cri" "$extracted/bin"

step "the payload is real: the extracted containerd and runc run"
run tar -xzf "$extracted/cri/containerd.tar.gz" -C "$tmp"
run "$tmp/bin/containerd" --version
run "$tmp/bin/ctr" --version
run "$tmp/bin/runc" --version

step "done in $((SECONDS - started)) s"
echo "bundle: $bundle ($(du -h --apparent-size "$bundle" | cut -f1))"
