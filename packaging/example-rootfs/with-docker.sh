#!/usr/bin/env bash
# Writes DST: a copy of the example cluster image SRC (packaging/example-rootfs/build.sh, amd64)
# whose container runtime is docker instead of containerd: cri/docker.tar.gz made of Debian's
# docker.io, containerd, runc and tini (docker-tarball.sh) in place of cri/containerd.tar.gz,
# containerd's configuration files gone, kubeadm's criSocket the kubelet's dockershim, the
# kubelet unit after docker.service and the Kubefile's runtime label docker (its version
# label dropped).
#
#   packaging/example-rootfs/with-docker.sh SRC DST
#
# For the air-gapped VM test with docker (docs/airgap-vm.md): Debian's dockerd is linked
# against libdevmapper, and docker loads an AppArmor profile with apparmor_parser where the kernel
# enforces AppArmor: the guest needs both (KUBEFERRY_VM_GUEST_EXTRA=libdevmapper1.02.1,apparmor).
set -euo pipefail
if [ $# -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "usage: $0 SRC DST" >&2
  exit 2
fi
src="${1%/}"
dst="${2%/}"
here="$(cd "$(dirname "$0")" && pwd)"
[ -f "$src/cri/containerd.tar.gz" ] && [ -f "$src/etc/kubeadm.yml" ] && [ -f "$src/Kubefile" ] ||
  { echo "error: '$src' is not the example image (no cri/containerd.tar.gz, etc/kubeadm.yml or Kubefile)" >&2; exit 1; }
[ ! -e "$dst" ] || { echo "error: '$dst' exists; not replacing it" >&2; exit 1; }
work="$(mktemp -d "$(dirname "$dst")/.$(basename "$dst").tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -a "$src/." "$work/"
rm -f "$work/cri/containerd.tar.gz" "$work/etc/config.toml" "$work/etc/containerd.service" "$work/etc/hosts.toml"
"$here/docker-tarball.sh" "$work/cri/docker.tar.gz" amd64
sed -i 's#criSocket: /run/containerd/containerd.sock#criSocket: /var/run/dockershim.sock#' "$work/etc/kubeadm.yml"
sed -i 's/containerd\.service/docker.service/g' "$work/etc/kubelet.service"
sed -i -e 's#"cluster.alpha.sealer.io/container-runtime-type"="containerd"#"cluster.alpha.sealer.io/container-runtime-type"="docker"#' \
  -e '/"cluster.alpha.sealer.io\/container-runtime-version"/d' "$work/Kubefile"
grep -q 'dockershim.sock' "$work/etc/kubeadm.yml" || { echo "error: no criSocket replaced in etc/kubeadm.yml" >&2; exit 1; }
mv "$work" "$dst"
trap - EXIT
echo "with-docker.sh: wrote $dst" >&2
