#!/usr/bin/env bash
# Writes OUT_FILE: a `cri/docker.tar.gz` in the layout of docker's static bundle
# (docker/dockerd, docker/docker, docker/containerd, docker/containerd-shim-runc-v2, docker/ctr,
# docker/runc, docker/docker-init, docker/docker-proxy) made of Debian's docker.io, containerd,
# runc and tini packages for ARCH (default amd64), fetched with `apt-get download` into the
# example cache (target/example-cache/, or $KUBEFERRY_EXAMPLE_CACHE) and unpacked with
# `dpkg-deb -x`. Nothing is installed.
#
#   packaging/example-rootfs/docker-tarball.sh OUT_FILE [ARCH]
#
# Debian's dockerd is linked against libdevmapper.so.1.02.1 (Debian: libdevmapper1.02.1),
# which a host running it must have; docker's own static bundle needs nothing.
set -euo pipefail
export LC_ALL=C
umask 022

LOG_PREFIX=docker-tarball.sh
PACKAGES=(docker.io containerd runc tini)

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT_FILE [amd64|arm64]" >&2
  exit 2
fi
out="$1"
arch="${2:-amd64}"
case "$arch" in amd64 | arm64) ;; *) echo "error: ARCH is amd64 or arm64, not '$arch'" >&2; exit 2 ;; esac
for tool in apt-get dpkg-deb tar gzip; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed (this script expects Debian)" >&2; exit 1; }
done

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
cache="${KUBEFERRY_EXAMPLE_CACHE:-$repo/target/example-cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
debs_init

fetch_debs "$arch" "${PACKAGES[@]}" || { echo "error: could not fetch ${PACKAGES[*]} for $arch from the Debian archive" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
work="$(mktemp -d "$(dirname "$out")/.docker-tarball.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for pkg in "${PACKAGES[@]}"; do
  dpkg-deb -x "$(deb_any "$pkg" "$arch")" "$work/unpack"
done
u="$work/unpack"
mkdir -p "$work/stage/docker"
while read -r name from; do
  install -m 0755 "$u/$from" "$work/stage/docker/$name"
done <<'LIST'
dockerd usr/sbin/dockerd
docker usr/bin/docker
docker-proxy usr/sbin/docker-proxy
docker-init usr/bin/tini-static
containerd usr/bin/containerd
containerd-shim-runc-v2 usr/bin/containerd-shim-runc-v2
ctr usr/bin/ctr
runc usr/sbin/runc
LIST
deterministic_tgz "$work/stage" docker >"$work/docker.tar.gz"
mv "$work/docker.tar.gz" "$out"
log "wrote $out ($(du -h "$out" | cut -f1)): docker $(dpkg-deb -f "$(deb_any docker.io "$arch")" Version) for $arch"
