#!/usr/bin/env bash
# Generates the demo's example cluster image: a small but real CloudRootfs directory (the
# sealer/sealos layout) whose executables are Debian 12's own, for amd64 and arm64.
#
#   packaging/example-rootfs/mini.sh OUT_DIR
#
# It is a miniature for the bundle format, NOT a working Kubernetes: there is no kubeadm,
# kubelet or kubectl and no container image (OUT_DIR/README.md says so too).
#
# Where the files come from: the .deb files of containerd, runc, conntrack, socat and ethtool,
# for amd64 and arm64, fetched with `apt-get download` from the Debian archive named in this
# machine's /etc/apt/sources.list(.d) and unpacked with `dpkg-deb -x`. Nothing is installed.
# apt runs with its own package lists and architecture list under the cache directory, so
# fetching the arm64 packages needs neither root nor `dpkg --add-architecture` on this machine.
#
#   cache  $KUBEFERRY_EXAMPLE_CACHE, default target/example-cache/ in this repository:
#          debs/ (the .deb files) and apt/ (apt's lists). A run whose .deb files are all there
#          uses no network. KUBEFERRY_EXAMPLE_REFRESH=1 fetches the archive's current ones.
#
# OUT_DIR is generated afresh on every run (a few seconds; the same .deb files give the same
# bytes) into a temporary sibling, then swapped in; an existing OUT_DIR is replaced only if this
# script made it. If the arm64 packages cannot be fetched, arm64/ holds only a README.txt saying
# so, and the script says so on stderr.
#
# Needs apt-get, dpkg-deb, GNU tar (--sort) and gzip: all part of every Debian system.
set -euo pipefail
export LC_ALL=C
umask 022

LOG_PREFIX=mini.sh
MARKER="# kubeferry example rootfs"
K8S_VERSION=v1.20.2
REGISTRY=sea.hub:5000
PACKAGES=(containerd runc conntrack socat ethtool)

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
for tool in apt-get dpkg-deb tar gzip od; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed (this script expects Debian)" >&2; exit 1; }
done

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
out="$1"
out="${out%/}"
case "$out" in
  "" | / | . | ..) echo "error: refusing OUT_DIR '$1'" >&2; exit 2 ;;
esac
if [ -e "$out" ]; then
  [ -d "$out" ] || { echo "error: '$out' exists and is not a directory" >&2; exit 1; }
  if [ -n "$(ls -A "$out")" ] && ! head -n 1 "$out/README.md" 2>/dev/null | grep -qxF "$MARKER"; then
    echo "error: '$out' is not empty and was not made by this script; not replacing it" >&2
    exit 1
  fi
fi
cache="${KUBEFERRY_EXAMPLE_CACHE:-$repo/target/example-cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
debs_init
debs="$cache/debs"

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "$(dirname "$out")/.$(basename "$out").tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
new="$work/rootfs"
mkdir -p "$new"

# --- fetching the .deb files (lib.sh) -----------------------------------------------------------

if [ "${KUBEFERRY_EXAMPLE_REFRESH:-0}" = 1 ]; then
  rm -f "$debs"/*.deb
fi
fetch() { fetch_debs "$1" "${PACKAGES[@]}"; }

# --- per architecture: cri/containerd.tar.gz and bin/ ------------------------------------------

build_arch() {
  local arch="$1" machine pkg unpack stage tool src
  case "$arch" in
    amd64) machine="3e 00" ;;
    arm64) machine="b7 00" ;;
  esac
  unpack="$work/unpack/$arch"
  for pkg in "${PACKAGES[@]}"; do
    mkdir -p "$unpack/$pkg"
    dpkg-deb -x "$(deb "$pkg" "$arch")" "$unpack/$pkg"
    printf '| %s | %s | %s | %s |\n' "$arch" "$pkg" "$(dpkg-deb -f "$(deb "$pkg" "$arch")" Version)" \
      "$(dpkg-deb -f "$(deb "$pkg" "$arch")" Depends)" >>"$work/provenance.$arch"
  done

  # The runtime: containerd's own release layout (bin/containerd, bin/ctr, ...), plus runc.
  stage="$work/stage/$arch"
  mkdir -p "$stage/bin" "$new/$arch/cri" "$new/$arch/bin"
  for tool in containerd containerd-shim-runc-v2 ctr; do
    install -m 0755 "$unpack/containerd/usr/bin/$tool" "$stage/bin/$tool"
  done
  install -m 0755 "$unpack/runc/usr/sbin/runc" "$stage/bin/runc"

  # Node tools kubeadm's preflight looks for on the PATH.
  install -m 0755 "$unpack/conntrack/usr/sbin/conntrack" "$new/$arch/bin/conntrack"
  install -m 0755 "$unpack/socat/usr/bin/socat" "$new/$arch/bin/socat"
  install -m 0755 "$unpack/ethtool/sbin/ethtool" "$new/$arch/bin/ethtool"

  for src in "$stage"/bin/* "$new/$arch"/bin/*; do
    if [ "$(elf_machine "$src")" != "$machine" ]; then
      echo "error: '$src' is not an $arch executable (ELF machine $(elf_machine "$src"))" >&2
      exit 1
    fi
  done
  deterministic_tgz "$stage" bin >"$new/$arch/cri/containerd.tar.gz"
}

start=$SECONDS
fetch amd64 || { echo "error: could not fetch the amd64 packages from the Debian archive" >&2; exit 1; }
containerd_version="$(upstream_version "$(deb containerd amd64)")"
arm64_ok=1
fetch arm64 || arm64_ok=0
# The two architectures in parallel: most of the time goes into xz (dpkg-deb) and gzip.
pids=()
build_arch amd64 &
pids+=($!)
if [ "$arm64_ok" = 1 ]; then
  build_arch arm64 &
  pids+=($!)
fi
for pid in "${pids[@]}"; do
  wait "$pid" || exit 1
done
if [ "$arm64_ok" = 0 ]; then
  log "warning: could not fetch the arm64 packages; arm64/ holds only a README.txt"
  mkdir -p "$new/arm64"
  cat >"$new/arm64/README.txt" <<EOF
This example's arm64 overlay is empty: mini.sh could not download the arm64 .deb files of
${PACKAGES[*]} from the Debian archive when it ran. Run mini.sh again where
deb.debian.org (or the mirror in /etc/apt/sources.list.d) is reachable.
EOF
fi

# --- the common tree ---------------------------------------------------------------------------

mkdir -p "$new"/{etc,manifests,statics} "$new/registry/docker/registry/v2"

cat >"$new/Kubefile" <<EOF
# The build file of a sealer cluster image. kubeferry packs the directory as it is and does
# not read this file: amd64/ and arm64/ are laid over the common tree per architecture.
FROM scratch
COPY . .
LABEL "cluster.alpha.sealer.io/cluster-runtime-version"="$K8S_VERSION"
LABEL "cluster.alpha.sealer.io/cluster-runtime-type"="kubernetes"
LABEL "cluster.alpha.sealer.io/container-runtime-type"="containerd"
LABEL "cluster.alpha.sealer.io/container-runtime-version"="$containerd_version"
EOF

# kubeadm's configuration, in the multi-document form sealer images carry in etc/kubeadm.yml.
cat >"$new/etc/kubeadm.yml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  # advertiseAddress: 192.168.2.110
  bindPort: 6443
nodeRegistration:
  criSocket: /run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
#controlPlaneEndpoint: "apiserver.cluster.local:6443"
imageRepository: $REGISTRY
networking:
  # dnsDomain: cluster.local
  podSubnet: 100.64.0.0/10
  serviceSubnet: 10.96.0.0/22
apiServer:
  #  certSANs:
  #    - 127.0.0.1
  #    - apiserver.cluster.local
  extraArgs:
    feature-gates: TTLAfterFinished=true,EphemeralContainers=true
    audit-policy-file: "/etc/kubernetes/audit-policy.yml"
    audit-log-path: "/var/log/kubernetes/audit.log"
    audit-log-format: json
    audit-log-maxbackup: '10'
    audit-log-maxsize: '100'
    audit-log-maxage: '7'
    enable-aggregator-routing: 'true'
  extraVolumes:
    - name: "audit"
      hostPath: "/etc/kubernetes"
      mountPath: "/etc/kubernetes"
      pathType: DirectoryOrCreate
    - name: "audit-log"
      hostPath: "/var/log/kubernetes"
      mountPath: "/var/log/kubernetes"
      pathType: DirectoryOrCreate
    - name: localtime
      hostPath: /etc/localtime
      mountPath: /etc/localtime
      readOnly: true
      pathType: File
controllerManager:
  extraArgs:
    feature-gates: TTLAfterFinished=true,EphemeralContainers=true
    experimental-cluster-signing-duration: 876000h
  extraVolumes:
    - hostPath: /etc/localtime
      mountPath: /etc/localtime
      name: localtime
      readOnly: true
      pathType: File
scheduler:
  extraArgs:
    feature-gates: TTLAfterFinished=true,EphemeralContainers=true
  extraVolumes:
    - hostPath: /etc/localtime
      mountPath: /etc/localtime
      name: localtime
      readOnly: true
      pathType: File
etcd:
  local:
    extraArgs:
      listen-metrics-urls: http://0.0.0.0:2381
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: "ipvs"
ipvs:
  excludeCIDRs:
    - "10.103.97.2/32"
EOF
kubeadm_kubelet_and_join_documents >>"$new/etc/kubeadm.yml"

# containerd's configuration: /etc/containerd/config.toml on the node.
cat >"$new/etc/config.toml" <<EOF
# containerd $containerd_version configuration for the cluster: installed as /etc/containerd/config.toml.
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$REGISTRY/pause:3.2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      # Debian's containernetworking-plugins install here (upstream's default is /opt/cni/bin).
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".registry]
      # One directory per registry host (certs.d/$REGISTRY/hosts.toml: etc/hosts.toml here).
      config_path = "/etc/containerd/certs.d"
EOF

cat >"$new/etc/hosts.toml" <<EOF
# The cluster's registry for containerd: installed as /etc/containerd/certs.d/$REGISTRY/hosts.toml.
# The registry (etc/registry_config.yml) serves plain HTTP on port 5000.
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF

# Debian's unit, pointed at /usr/local/bin where cri/containerd.tar.gz unpacks (-C /usr/local).
sed 's|^ExecStart=/usr/bin/containerd$|ExecStart=/usr/local/bin/containerd|' \
  "$work/unpack/amd64/containerd/lib/systemd/system/containerd.service" >"$new/etc/containerd.service"
grep -q '^ExecStart=/usr/local/bin/containerd$' "$new/etc/containerd.service" ||
  { echo "error: Debian's containerd.service changed; update mini.sh" >&2; exit 1; }

cat >"$new/etc/kubelet.service" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
After=containerd.service
Wants=containerd.service

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF

cat >"$new/etc/10-kubeadm.conf" <<'EOF'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF

# The cluster's registry (distribution), serving registry/ of this image as its storage.
cat >"$new/etc/registry_config.yml" <<'EOF'
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF

cat >"$new/manifests/imageList" <<EOF
# Images the cluster needs beyond those named in manifests/ and charts/, one a line: what
# \`kubeadm config images list --kubernetes-version $K8S_VERSION --image-repository $REGISTRY\`
# prints, without CoreDNS (Debian 12 has no CoreDNS to build its image from).
# This example carries none of them: registry/ is empty.
$REGISTRY/kube-apiserver:$K8S_VERSION
$REGISTRY/kube-controller-manager:$K8S_VERSION
$REGISTRY/kube-scheduler:$K8S_VERSION
$REGISTRY/kube-proxy:$K8S_VERSION
$REGISTRY/pause:3.2
$REGISTRY/etcd:3.4.13-0
EOF

cat >"$new/statics/audit-policy.yml" <<'EOF'
# The API server's audit policy: etc/kubeadm.yml points the API server at
# /etc/kubernetes/audit-policy.yml.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - "RequestReceived"
rules:
  # High-volume, low-risk requests.
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
    resources:
      - group: ""
        resources: ["endpoints", "services"]
  - level: None
    userGroups: ["system:nodes"]
    verbs: ["get"]
    resources:
      - group: ""
        resources: ["nodes"]
  - level: None
    nonResourceURLs:
      - /healthz*
      - /version
  - level: None
    resources:
      - group: ""
        resources: ["events"]
  # Secrets, ConfigMaps and TokenReviews can hold sensitive data: metadata only.
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps"]
      - group: authentication.k8s.io
        resources: ["tokenreviews"]
  - level: Metadata
EOF

# No scripts/: kubeferry runs an image's sealer scripts (scripts/init.sh, clean.sh, ...) in
# place of its built-in steps, and this miniature has nothing for them to do.

# --- README.md ----------------------------------------------------------------------------------

{
  cat <<EOF
$MARKER

A miniature cluster image in the sealer/sealos CloudRootfs layout, made by
\`packaging/example-rootfs/mini.sh\` for kubeferry's bundle format demo
(\`packaging/demo.sh\`). Its executables are real (Debian 12's containerd $containerd_version,
runc, conntrack, socat and ethtool, for amd64 and arm64), its configuration is in the forms
sealer images ship, for Kubernetes $K8S_VERSION.

**It is NOT a working Kubernetes.** There is no kubeadm, kubelet or kubectl and no container
image: \`registry/\` is an empty registry layout and \`manifests/imageList\` only names the images.
The real example image, with Kubernetes built from Debian's source, is a later step.
It carries no \`scripts/\`: kubeferry's built-in install steps set the node up.

## Layout

| path | what |
|---|---|
| \`Kubefile\` | the sealer build file (\`FROM scratch\`, \`COPY . .\`, sealer's LABELs) |
| \`etc/kubeadm.yml\` | kubeadm's multi-document configuration (\`kubeadm.k8s.io/v1beta2\`: Init, Cluster, KubeProxy, Kubelet, Join) |
| \`etc/config.toml\`, \`etc/hosts.toml\`, \`etc/containerd.service\` | containerd: /etc/containerd/config.toml, certs.d/$REGISTRY/hosts.toml, its systemd unit |
| \`etc/kubelet.service\`, \`etc/10-kubeadm.conf\` | the kubelet's systemd unit and kubeadm's drop-in |
| \`etc/registry_config.yml\` | the cluster registry's (distribution's) configuration |
| \`manifests/imageList\` | the control-plane images, as \`$REGISTRY/NAME:TAG\` |
| \`statics/audit-policy.yml\` | the API server's audit policy |
| \`registry/docker/registry/v2/\` | the registry's storage, empty |
| \`amd64/\`, \`arm64/\` | per-architecture overlays: \`cri/containerd.tar.gz\` and \`bin/\` |

kubeferry lays \`amd64/\` (or \`arm64/\`) over the common tree, so the amd64 bundle holds
\`cri/containerd.tar.gz\` and \`bin/conntrack\` built for amd64 and nothing of arm64/.

**\`cri/containerd.tar.gz\`** holds \`bin/containerd\`, \`bin/containerd-shim-runc-v2\`,
\`bin/ctr\` and \`bin/runc\`: the layout of containerd's own release tarballs
(containerd-VERSION-linux-ARCH.tar.gz), installed with \`tar -xzf containerd.tar.gz -C /usr/local\`.
It is deterministic: names sorted, mtime 0, owner root, \`gzip -n\`.

**\`bin/\`** holds conntrack, socat and ethtool, tools kubeadm's preflight looks for on a node.

All of them are Debian's builds, dynamically linked: a node needs the Debian 12 libraries named
below (\`runc\` needs libseccomp2, as sealer's images also assume).

## Provenance

| arch | Debian package | version | Depends |
|---|---|---|---|
EOF
  cat "$work"/provenance.*
  if [ "$arm64_ok" = 0 ]; then
    printf '\nThe arm64 packages could not be downloaded when this was generated: arm64/ is empty\n(see arm64/README.txt).\n'
  fi
} >"$new/README.md"

# --- swap in -------------------------------------------------------------------------------------

rm -rf "$out"
mv "$new" "$out"
log "wrote $out ($(du -sh "$out" | cut -f1)) in $((SECONDS - start)) s"
