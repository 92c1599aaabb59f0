#!/usr/bin/env bash
# Checks a rootfs made by build.sh on the build host, as far as that can go without a node:
#
#   packaging/example-rootfs/check.sh ROOTFS_DIR
#
#   1. bin/kubeadm, bin/kubelet, bin/kubectl are v1.20.2; kubeadm prints its
#      KubeletConfiguration defaults without panicking (the reflect2 fix);
#   2. `kubeadm config images list --config etc/kubeadm.yml` names exactly the images in
#      registry/, CoreDNS apart (Debian has none);
#   3. Debian's docker-registry serving ROOTFS/registry (read-only use, a copy of nothing)
#      answers `skopeo inspect` for each of them;
#   4. each image's layer, unpacked from registry/ into a temporary directory, runs: the four
#      Kubernetes binaries print their version, pause prints its version, etcd prints its
#      version through the image's own loader and then serves /health for a moment; kube-proxy's
#      iptables, iptables-legacy and conntrack print theirs (all with chroot).
#
# Runs as root (chroot). Needs docker-registry, skopeo, curl and jq. Changes nothing in ROOTFS.
set -euo pipefail
export LC_ALL=C

K8S_VERSION=v1.20.2
IMAGE_REPOSITORY=sea.hub:5000/library
REGISTRY_STORAGE_BLOBS=docker/registry/v2/blobs/sha256

if [ $# -ne 1 ]; then
  echo "usage: $0 ROOTFS_DIR" >&2
  exit 2
fi
root="$(cd "$1" && pwd)"
for tool in docker-registry skopeo curl jq chroot; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed: apt-get install -y docker-registry skopeo curl jq" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "error: check.sh runs as root (it uses chroot)" >&2; exit 1; }

say() { printf 'check.sh: %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

tmp="$(mktemp -d)"
registry_pid=
etcd_pid=
cleanup() {
  [ -z "$etcd_pid" ] || { kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; }
  [ -z "$registry_pid" ] || { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT

# 1. the binaries
for b in kubeadm kubelet kubectl; do
  case "$b" in
    kubeadm) v="$("$root/bin/kubeadm" version -o short)" ;;
    kubelet) v="$("$root/bin/kubelet" --version 2>/dev/null | awk '{print $2}')" ;;
    kubectl) v="$("$root/bin/kubectl" version --client --short 2>/dev/null | awk '{print $3}')" ;;
  esac
  [ "$v" = "$K8S_VERSION" ] || fail "bin/$b is version '$v', expected '$K8S_VERSION'"
done
say "bin/kubeadm, bin/kubelet, bin/kubectl: $K8S_VERSION"
out="$("$root/bin/kubeadm" config print init-defaults --component-configs KubeletConfiguration 2>&1)" ||
  { printf '%s\n' "$out" | tail -n 20 >&2; fail "kubeadm config print init-defaults --component-configs KubeletConfiguration failed"; }
grep -q '^kind: KubeletConfiguration$' <<<"$out" || fail "kubeadm printed no KubeletConfiguration"
say "kubeadm config print init-defaults --component-configs KubeletConfiguration: ok"

# 2. the images kubeadm asks for
listed="$("$root/bin/kubeadm" config images list --config "$root/etc/kubeadm.yml" 2>/dev/null | grep "^$IMAGE_REPOSITORY/" | sort)"
held="$(cd "$root/registry/docker/registry/v2/repositories" &&
  for repo in */*; do
    for tag in "$repo"/_manifests/tags/*; do printf 'sea.hub:5000/%s:%s\n' "$repo" "$(basename "$tag")"; done
  done | sort)"
say "kubeadm config images list --config etc/kubeadm.yml:"
while read -r image; do printf '    %s\n' "$image" >&2; done <<<"$listed"
[ "$(grep -v "^$IMAGE_REPOSITORY/coredns:" <<<"$listed")" = "$held" ] ||
  fail "registry/ holds $(tr '\n' ' ' <<<"$held")but kubeadm asks for $(tr '\n' ' ' <<<"$listed")"
say "registry/ holds each of them but coredns"

# 3. a real registry on the storage
port=
for p in $(seq 35200 35300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
  port=$p
  break
done
[ -n "$port" ] || fail "no free port in 127.0.0.1:35200-35300"
printf '%s\n' "version: 0.1" "log:" "  level: warn" "storage:" "  filesystem:" \
  "    rootdirectory: $root/registry" "  maintenance:" "    uploadpurging:" "      enabled: false" \
  "    readonly:" "      enabled: true" "http:" "  addr: 127.0.0.1:$port" >"$tmp/registry.yml"
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  kill -0 "$registry_pid" 2>/dev/null || { cat "$tmp/registry.log" >&2; fail "docker-registry exited"; }
  sleep 0.1
done
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$tmp/policy.json"
while read -r image; do
  name="${image#"$IMAGE_REPOSITORY/"}"
  ref="127.0.0.1:$port/library/$name"
  info="$(REGISTRY_AUTH_FILE="$tmp/auth.json" skopeo --policy "$tmp/policy.json" inspect --tls-verify=false "docker://$ref" </dev/null)" ||
    fail "skopeo inspect docker://$ref failed"
  raw="$(REGISTRY_AUTH_FILE="$tmp/auth.json" skopeo --policy "$tmp/policy.json" inspect --raw --tls-verify=false "docker://$ref" </dev/null)"
  layer="$(jq -r '.layers[0].digest' <<<"$raw")"
  say "skopeo inspect docker://$ref: $(jq -r '.Architecture + "/" + .Os + ", " + (.Layers | length | tostring) + " layer, digest " + .Digest' <<<"$info")"
  # 4. the layer's files, from the storage the registry serves
  name="${name%%:*}"
  mkdir -p "$tmp/img/$name"
  tar -xzf "$root/registry/$REGISTRY_STORAGE_BLOBS/${layer:7:2}/${layer:7}/data" -C "$tmp/img/$name"
done <<<"$held"
kill "$registry_pid" 2>/dev/null || true
wait "$registry_pid" 2>/dev/null || true
registry_pid=

for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
  v="$(chroot "$tmp/img/$name" "/usr/local/bin/$name" --version)"
  [ "$v" = "Kubernetes $K8S_VERSION" ] || fail "$name in its image printed '$v'"
  say "image $name: /usr/local/bin/$name --version: $v"
done
say "image pause: /pause -v: $(chroot "$tmp/img/pause" /pause -v)"
r="$tmp/img/etcd"
say "image etcd: its loader runs etcd: $("$r/lib64/ld-linux-x86-64.so.2" --library-path "$r/lib/x86_64-linux-gnu" \
  "$r/usr/local/bin/etcd" --version | sed -n 1p)"
chroot "$r" /usr/local/bin/etcd --data-dir /tmp/etcd-data --listen-client-urls http://127.0.0.1:23790 \
  --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
  --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
  >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
health=
for _ in $(seq 1 100); do
  health="$(curl -fsS http://127.0.0.1:23790/health 2>/dev/null)" && break
  kill -0 "$etcd_pid" 2>/dev/null || { tail -n 20 "$tmp/etcd.log" >&2; fail "etcd exited"; }
  sleep 0.2
done
[ -n "$health" ] || { tail -n 20 "$tmp/etcd.log" >&2; fail "etcd did not answer /health"; }
say "image etcd: etcd served, /health: $health"
kill "$etcd_pid" 2>/dev/null || true
wait "$etcd_pid" 2>/dev/null || true
etcd_pid=
for cmd in "iptables --version" "iptables-legacy --version" "ip6tables-save --version" "conntrack --version"; do
  # shellcheck disable=SC2086 # the command and its argument
  say "image kube-proxy: $cmd: $(chroot "$tmp/img/kube-proxy" /usr/sbin/$cmd 2>&1)"
done
say "all checks passed"
