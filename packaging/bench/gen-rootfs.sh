#!/usr/bin/env bash
# Generates the benchmark's cluster rootfs, shaped like a real CloudRootfs image:
#
#   one third  already-compressed layer blobs: real gzip output (gzip -n -6) of semi-random
#              data (seeded random bytes, slices of this machine's ELF files, generated text),
#              in the distribution registry layout registry/docker/registry/v2/blobs/sha256/
#              XX/HEX/data, with JSON image manifests, config blobs and link files;
#   one half   executables: copies and concatenations of real ELF files of this machine
#              (kubelet, kubeadm, containerd, ... at 20-120 MiB each for 2 GiB), CNI plugins,
#              real shared libraries copied as they are;
#   one sixth  YAML and text: CRDs and manifests, Helm charts, configuration, scripts, docs.
#
#   packaging/bench/gen-rootfs.sh WORK SIZE_BYTES SEED
#
# Writes WORK/rootfs, WORK/rootfs.sha256 (sha256sum list, paths relative to the rootfs),
# WORK/rootfs.composition and WORK/rootfs.params. The output depends only on SIZE_BYTES,
# SEED and this machine's set of ELF files (whose list's digest is in rootfs.params), and on
# the gzip version for the blobs. Needs bash, coreutils, findutils, awk, gzip and openssl.
set -euo pipefail
export LC_ALL=C

GENERATOR_VERSION=3
here="$(cd "$(dirname "$0")" && pwd)"

if [ $# -ne 3 ]; then
  echo "usage: $0 WORK SIZE_BYTES SEED" >&2
  exit 2
fi
work="$1"
size="$2"
seed="$3"
case "$size$seed" in
  *[!0-9]*) echo "error: SIZE_BYTES and SEED must be integers" >&2; exit 2 ;;
esac
for tool in awk gzip openssl sha256sum find; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed" >&2; exit 1; }
done
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# --- seeded randomness ---------------------------------------------------------------------

# A 64-bit LCG (Knuth's MMIX constants); bash arithmetic wraps modulo 2^64. R: 31 bits.
RNG=$(( seed * 2862933555777941757 + 3037000493 ))
R=0
rnd() {
  RNG=$(( RNG * 6364136223846793005 + 1442695040888963407 ))
  R=$(( (RNG >> 33) & 0x7fffffff ))
}
# R = random integer in [0, $1).
ri() {
  rnd
  R=$(( R % $1 ))
}

# Writes $2 seeded pseudo-random bytes for label $1 (AES-128-CTR keystream).
rand_bytes() {
  local key
  key="$(printf 'kubeferry-bench:%s:%s' "$seed" "$1" | sha256sum | cut -c1-32)"
  head -c "$2" /dev/zero | openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000
}

# The tree is reused while these are the same. The ELF pool (this machine's binaries) is
# recorded beside them but does not force a new tree: installing a package would otherwise
# throw away a tree that measures the same thing.
params="generator=$GENERATOR_VERSION size_bytes=$size seed=$seed"
if [ -f "$work/rootfs.params" ] && [ "$(head -n 1 "$work/rootfs.params")" = "$params" ] \
   && [ -d "$work/rootfs" ] && [ -s "$work/rootfs.sha256" ] && [ -s "$work/rootfs.composition" ]; then
  echo "reusing $work/rootfs ($(tr '\n' ' ' < "$work/rootfs.params"))" >&2
  exit 0
fi

# --- pools of real bytes -------------------------------------------------------------------

# Every ELF file of at least 64 KiB under the system's program and library directories,
# sorted by path.
ELF_F=()
ELF_S=()
while IFS=$'\t' read -r s p; do
  m=""
  IFS= read -r -n4 m < "$p" 2>/dev/null || true
  if [ "$m" = $'\x7fELF' ]; then
    ELF_F+=("$p")
    ELF_S+=("$s")
  fi
done < <(find /usr/bin /usr/sbin /usr/lib /usr/libexec /usr/local/bin /usr/local/lib -xdev \
           -type f -size +64k -readable -printf '%s\t%p\n' 2>/dev/null | sort -t$'\t' -k2)
if [ "${#ELF_F[@]}" -lt 8 ]; then
  echo "error: found only ${#ELF_F[@]} ELF files under /usr; the benchmark needs real binaries" >&2
  exit 1
fi
pool_digest="$(for i in "${!ELF_F[@]}"; do printf '%s %s\n' "${ELF_S[i]}" "${ELF_F[i]}"; done | sha256sum | cut -c1-16)"
made_from="elf_pool=${#ELF_F[@]}_files:$pool_digest gzip=$(gzip --version | sed -n 1p | tr ' ' _)"

echo "generating $work/rootfs ($params $made_from)" >&2
rm -rf "$work/rootfs" "$work/rootfs.tmp" "$work/rootfs.sha256" "$work/rootfs.params" "$work/rootfs.composition"
root="$work/rootfs.tmp"
tmp="$work/gen.tmp"
rm -rf "$tmp"
mkdir -p "$root" "$tmp"

# Writes $3 bytes of the concatenation of pool $1's files, starting with file number $2.
pool_cat() {
  local -n files="$1_F" sizes="$1_S"
  local n=${#files[@]} i=$(( $2 % ${#files[@]} )) need=$3 s
  local -a whole=()
  while (( need > 0 )); do
    s=${sizes[i]}
    if (( s <= need )); then
      whole+=("${files[i]}")
      need=$(( need - s ))
    else
      if (( ${#whole[@]} )); then cat -- "${whole[@]}"; whole=(); fi
      head -c "$need" -- "${files[i]}"
      need=0
    fi
    i=$(( (i + 1) % n ))
  done
  if (( ${#whole[@]} )); then cat -- "${whole[@]}"; fi
}

# --- budgets ---------------------------------------------------------------------------------

blob_budget=$(( size / 3 ))
exe_budget=$(( size / 2 ))
text_budget=$(( size - blob_budget - exe_budget ))

# --- executables -----------------------------------------------------------------------------

# Path and share of the executables' budget in per mille; the rest goes to real shared
# libraries copied as they are into lib64/. Sizes for 2 GiB: kubelet 118 MiB, sealer 90 MiB,
# velero 80 MiB, kubeadm 66 MiB, containerd 55 MiB, ...
exes=(
  bin/kubelet:115 bin/kubeadm:64 bin/kubectl:52 bin/sealer:88 bin/helm:50 bin/crictl:40
  bin/image-cri-shim:36 bin/seautil:32 bin/etcdctl:24 bin/kube-vip:28 bin/velero:78
  bin/cilium:62 bin/lvscare:20 bin/registry:26 bin/conntrack:1
  cri/containerd:54 cri/ctr:27 cri/containerd-shim-runc-v2:12 cri/runc:14 cri/nerdctl:30
  opt/cni/bin/calico:60
)
for plugin in bandwidth bridge dhcp firewall host-device host-local ipvlan loopback macvlan \
              portmap ptp sbr static tuning vlan vrf; do
  exes+=("opt/cni/bin/$plugin:4")
done
exe_used=0
for spec in "${exes[@]}"; do
  path="${spec%%:*}"
  bytes=$(( exe_budget * ${spec##*:} / 1000 ))
  mkdir -p "$root/$(dirname "$path")"
  ri "${#ELF_F[@]}"
  pool_cat ELF "$R" "$bytes" > "$root/$path"
  chmod 0755 "$root/$path"
  exe_used=$(( exe_used + bytes ))
done
ln -s calico "$root/opt/cni/bin/calico-ipam"
ln "$root/cri/containerd-shim-runc-v2" "$root/cri/containerd-shim"
# Real shared libraries, whole, up to the rest of the budget.
mkdir -p "$root/lib64"
lib_left=$(( exe_budget - exe_used ))
tries=0
while (( lib_left > 0 && tries < 10000 )); do
  tries=$(( tries + 1 ))
  ri "${#ELF_F[@]}"
  src="${ELF_F[R]}"
  name="${src##*/}"
  case "$name" in lib*.so*) ;; *) continue ;; esac
  [ -e "$root/lib64/$name" ] && continue
  bytes=${ELF_S[R]}
  (( bytes > 8 << 20 )) && continue
  if (( bytes > lib_left )); then
    head -c "$lib_left" -- "$src" > "$root/lib64/$name"
    bytes=$lib_left
  else
    cat -- "$src" > "$root/lib64/$name"
  fi
  chmod 0755 "$root/lib64/$name"
  stem="${name%%.so*}.so"
  if [ "$stem" != "$name" ] && [ ! -e "$root/lib64/$stem" ]; then
    ln -s "$name" "$root/lib64/$stem"
  fi
  lib_left=$(( lib_left - bytes ))
done
echo "  executables: $(du -sb "$root/bin" "$root/cri" "$root/opt" "$root/lib64" | awk '{s+=$1} END {printf "%.0f\n", s}') bytes" >&2

# --- YAML and text ---------------------------------------------------------------------------

spec_file="$tmp/text.spec"
: > "$spec_file"
declare -A made_dirs=()
# Adds a file: KIND SIZE PATH.
text() {
  local dir="$root/${3%/*}"
  rnd
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$root/$3" "$R" >> "$spec_file"
  if [ -z "${made_dirs[$dir]:-}" ]; then
    mkdir -p "$dir"
    made_dirs[$dir]=1
  fi
}

# Large manifests (45%): CRD bundles and workloads.
manifests=(
  crd:prometheus-operator-crds.yaml:16 crd:tigera-operator-crds.yaml:14 crd:cert-manager-crds.yaml:8
  crd:gateway-api-crds.yaml:6 crd:velero-crds.yaml:5 crd:longhorn-crds.yaml:5
  k8s:calico.yaml:12 k8s:cilium.yaml:9 k8s:ingress-nginx.yaml:6 k8s:longhorn.yaml:6
  k8s:kube-state-metrics.yaml:3 k8s:metrics-server.yaml:2 k8s:coredns.yaml:1
  k8s:kube-vip.yaml:1 k8s:cert-manager.yaml:6
)
weight_sum=0
for m in "${manifests[@]}"; do weight_sum=$(( weight_sum + ${m##*:} )); done
for m in "${manifests[@]}"; do
  kind="${m%%:*}"; rest="${m#*:}"; name="${rest%%:*}"
  text "$kind" $(( text_budget * 45 * ${m##*:} / 100 / weight_sum )) "manifests/$name"
done

# Helm charts (35%): many small templates, values, README.
charts=(calico cilium ingress-nginx cert-manager kube-prometheus-stack longhorn velero
        metrics-server kube-state-metrics coredns openebs minio loki tempo)
chart_budget=$(( text_budget * 35 / 100 / ${#charts[@]} ))
for c in "${charts[@]}"; do
  d="charts/$c"
  text values 400 "$d/Chart.yaml"
  ri 57344; left=$(( chart_budget - 8192 - R ))
  text values $(( 8192 + R )) "$d/values.yaml"
  ri 28672; left=$(( left - 4096 - R ))
  text md $(( 4096 + R )) "$d/README.md"
  n=0
  while (( left > 0 )); do
    ri 22528; bytes=$(( 2048 + R ))
    n=$(( n + 1 ))
    text chart "$bytes" "$d/templates/$(printf '%s-%04d' "$c" "$n").yaml"
    left=$(( left - bytes ))
  done
done

# Documentation (14%) and configuration and scripts (6%).
docs=(kubernetes containerd calico cilium helm sealer etcd runc)
for p in "${docs[@]}"; do
  text md $(( text_budget * 10 / 100 / ${#docs[@]} )) "share/doc/$p/CHANGELOG.md"
  text md $(( text_budget * 4 / 100 / ${#docs[@]} )) "share/doc/$p/README.md"
done
conf_budget=$(( text_budget * 6 / 100 ))
configs=(k8s:etc/kubeadm.yml k8s:etc/kubelet-config.yaml toml:etc/containerd/config.toml
         k8s:etc/registry/config.yml toml:etc/sysctl.d/99-kubernetes.conf
         toml:etc/systemd/system/kubelet.service toml:etc/systemd/system/containerd.service
         toml:etc/systemd/system/registry.service k8s:etc/image-cri-shim.yaml)
for c in "${configs[@]}"; do
  text "${c%%:*}" $(( conf_budget / 3 / ${#configs[@]} )) "${c#*:}"
done
for s in init clean kubelet-pre-start containerd-install registry-start check upgrade \
         ipvs-init lvscare-start cri-install auth-init image-load etcd-backup node-reset; do
  text sh $(( conf_budget * 2 / 3 / 14 )) "scripts/$s.sh"
done
awk -f "$here/gen-text.awk" "$spec_file"
chmod 0755 "$root"/scripts/*.sh
echo "  text: $(awk -F'\t' '{print $3}' "$spec_file" | tr '\n' '\0' | du -cb --files0-from=- | tail -1 | cut -f1) bytes in $(wc -l < "$spec_file") files" >&2

# Text pool for the layers: the generated files, in spec order.
TXT_F=()
TXT_S=()
while IFS=$'\t' read -r _ _ p _; do
  TXT_F+=("$p")
  TXT_S+=("$(stat -c %s "$p")")
done < "$spec_file"

# --- registry ------------------------------------------------------------------------------

reg="$root/registry/docker/registry/v2"
mkdir -p "$reg/blobs/sha256" "$reg/repositories"

# Moves file $1 into the blob store; sets DIGEST and BLOB_SIZE.
store_blob() {
  DIGEST="$(sha256sum "$1" | cut -c1-64)"
  BLOB_SIZE="$(stat -c %s "$1")"
  local d="$reg/blobs/sha256/${DIGEST:0:2}/$DIGEST"
  if [ -e "$d/data" ]; then rm -f "$1"; return; fi
  mkdir -p "$d"
  mv "$1" "$d/data"
  chmod 0644 "$d/data"
}

# Writes a link file $1 holding sha256:$2, as the registry does (no newline).
link() {
  mkdir -p "$(dirname "$1")"
  printf 'sha256:%s' "$2" > "$1"
}

gz_in=0
gz_out=0
layer_no=0
# Makes a gzip layer blob of about $1 bytes; sets LAYER_DIGEST, LAYER_SIZE, LAYER_DIFF_ID.
make_layer() {
  local target=$1 ratio_ppm fr fe ft input f="$tmp/layer"
  layer_no=$(( layer_no + 1 ))
  # Estimated compressed/uncompressed ratio, from the layers so far (first guess 0.55).
  if (( gz_in > 0 )); then ratio_ppm=$(( gz_out * 1000000 / gz_in )); else ratio_ppm=550000; fi
  input=$(( target * 1000000 / ratio_ppm ))
  ri 300; fr=$(( input * (150 + R) / 1000 ))
  ri 200; ft=$(( input * (100 + R) / 1000 ))
  fe=$(( input - fr - ft ))
  ri "${#ELF_F[@]}"; local ei=$R
  ri "${#TXT_F[@]}"; local ti=$R
  {
    rand_bytes "layer-$layer_no" "$fr"
    pool_cat ELF "$ei" "$fe"
    pool_cat TXT "$ti" "$ft"
  } | gzip -n -6 > "$f"
  LAYER_DIFF_ID="$(gzip -dc "$f" | sha256sum | cut -c1-64)"
  store_blob "$f"
  LAYER_DIGEST=$DIGEST
  LAYER_SIZE=$BLOB_SIZE
  gz_in=$(( gz_in + input ))
  gz_out=$(( gz_out + LAYER_SIZE ))
}

# Images: repository:tag:per-mille-of-the-blob-budget:own-layers:base, where base is a
# shared base image whose layers come first (none, static or debian).
images=(
  pause:3.9:1:1:none
  kube-apiserver:v1.29.9:70:2:static kube-controller-manager:v1.29.9:62:2:static
  kube-scheduler:v1.29.9:36:1:static kube-proxy:v1.29.9:60:2:debian
  etcd:3.5.12-0:60:3:static coredns/coredns:v1.11.1:30:1:static
  calico/node:v3.27.2:160:4:none calico/cni:v3.27.2:110:3:none
  calico/kube-controllers:v3.27.2:40:2:none calico/typha:v3.27.2:35:2:none
  metrics-server/metrics-server:v0.7.0:20:1:static
  ingress-nginx/controller:v1.10.0:110:5:none ingress-nginx/kube-webhook-certgen:v1.4.0:12:1:static
  kube-state-metrics/kube-state-metrics:v2.10.1:18:1:static
  prometheus/prometheus:v2.50.1:90:3:debian
)
base_static_w=2
base_debian_w=30
weight_sum=$(( base_static_w + base_debian_w ))
for im in "${images[@]}"; do
  IFS=: read -r _ _ w _ _ <<< "$im"
  weight_sum=$(( weight_sum + w ))
done
unit=$(( blob_budget / weight_sum ))

make_layer $(( base_static_w * unit ))
static_layers=("$LAYER_DIGEST:$LAYER_SIZE:$LAYER_DIFF_ID")
make_layer $(( base_debian_w * unit * 2 / 3 ))
debian_layers=("$LAYER_DIGEST:$LAYER_SIZE:$LAYER_DIFF_ID")
make_layer $(( base_debian_w * unit / 3 ))
debian_layers+=("$LAYER_DIGEST:$LAYER_SIZE:$LAYER_DIFF_ID")

for im in "${images[@]}"; do
  IFS=: read -r repo tag w own base <<< "$im"
  case "$base" in
    static) layers=("${static_layers[@]}") ;;
    debian) layers=("${debian_layers[@]}") ;;
    *) layers=() ;;
  esac
  left=$(( w * unit ))
  for (( l = 1; l <= own; l++ )); do
    if (( l == own )); then
      bytes=$left
    else
      ri 400; bytes=$(( left * (300 + R) / 1000 ))
    fi
    left=$(( left - bytes ))
    make_layer "$bytes"
    layers+=("$LAYER_DIGEST:$LAYER_SIZE:$LAYER_DIFF_ID")
  done
  # The image config blob.
  r="$reg/repositories/$repo"
  {
    printf '{"architecture":"amd64","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],'
    printf '"Entrypoint":["/usr/local/bin/%s"],"WorkingDir":"/","Labels":{"org.opencontainers.image.version":"%s"}},' "${repo##*/}" "$tag"
    printf '"created":"2024-03-01T00:00:00Z","history":['
    sep=""
    for layer in "${layers[@]}"; do
      printf '%s{"created":"2024-03-01T00:00:00Z","created_by":"COPY %s / # buildkit","comment":"buildkit.dockerfile.v0"}' "$sep" "${layer:0:12}"
      sep=","
    done
    printf '],"os":"linux","rootfs":{"type":"layers","diff_ids":['
    sep=""
    for layer in "${layers[@]}"; do
      printf '%s"sha256:%s"' "$sep" "${layer##*:}"
      sep=","
    done
    printf ']}}'
  } > "$tmp/config"
  store_blob "$tmp/config"
  config_digest=$DIGEST
  config_size=$BLOB_SIZE
  link "$r/_layers/sha256/$config_digest/link" "$config_digest"
  # The image manifest blob.
  {
    printf '{\n   "schemaVersion": 2,\n   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",\n'
    printf '   "config": {\n      "mediaType": "application/vnd.docker.container.image.v1+json",\n'
    printf '      "size": %s,\n      "digest": "sha256:%s"\n   },\n   "layers": [' "$config_size" "$config_digest"
    sep=""
    for layer in "${layers[@]}"; do
      IFS=: read -r digest lsize _ <<< "$layer"
      printf '%s\n      {\n         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",\n' "$sep"
      printf '         "size": %s,\n         "digest": "sha256:%s"\n      }' "$lsize" "$digest"
      sep=","
      link "$r/_layers/sha256/$digest/link" "$digest"
    done
    printf '\n   ]\n}'
  } > "$tmp/manifest"
  store_blob "$tmp/manifest"
  link "$r/_manifests/revisions/sha256/$DIGEST/link" "$DIGEST"
  link "$r/_manifests/tags/$tag/current/link" "$DIGEST"
  link "$r/_manifests/tags/$tag/index/sha256/$DIGEST/link" "$DIGEST"
done
echo "  layer blobs: $gz_out bytes of gzip from $gz_in bytes in $layer_no layers" >&2

# --- checksums and composition -----------------------------------------------------------------

rm -rf "$tmp"
find "$root" -type d -exec chmod 0755 {} +
(cd "$root" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/rootfs.sha256.tmp"
{
  # Hard-linked files count once, as tar and kubeferry store them once.
  total=$(find "$root" -type f -printf '%i %s\n' | awk '!seen[$1]++ {s+=$2} END {printf "%.0f\n", s}')
  # Files that start with a gzip, zstd, xz or bzip2 magic and are at least 64 KiB.
  compressed=0
  while IFS=$'\t' read -r s p; do
    m="$(head -c 2 -- "$p" | od -An -tx1 | tr -d ' ')"
    case "$m" in 1f8b|28b5|fd37|425a) compressed=$(( compressed + s )) ;; esac
  done < <(find "$root" -type f -size +63k -printf '%s\t%p\n')
  exe=$(find "$root/bin" "$root/cri" "$root/opt" "$root/lib64" -type f -printf '%i %s\n' | awk '!seen[$1]++ {s+=$2} END {printf "%.0f\n", s}')
  echo "files=$(find "$root" -type f | wc -l) dirs=$(find "$root" -type d | wc -l) symlinks=$(find "$root" -type l | wc -l)"
  echo "bytes_total=$total"
  echo "bytes_compressed=$compressed"
  echo "bytes_executables=$exe"
  echo "bytes_text_and_other=$(( total - compressed - exe ))"
} > "$work/rootfs.composition"
mv "$work/rootfs.sha256.tmp" "$work/rootfs.sha256"
mv "$root" "$work/rootfs"
printf '%s\n%s\n' "$params" "$made_from" > "$work/rootfs.params"
cat "$work/rootfs.composition" >&2
