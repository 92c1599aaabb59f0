#!/usr/bin/env bash
# Builds a real, working example cluster image for kubeferry: a CloudRootfs directory (the
# sealer/sealos layout) with Kubernetes v1.20.2, containerd and the control-plane images, made
# only from Debian 12's packages (binary and source) fetched through apt.
#
#   packaging/example-rootfs/build.sh ARCH OUT_DIR        (ARCH: amd64; arm64 is not supported yet)
#
# Runs as root on Debian 12 amd64 (it installs the tools it builds with and uses chroot to run
# the images' executables). check.sh beside it checks the result.
#
# docs/example-rootfs.md says what it builds from which packages and how long each part takes.
# In short:
#
#   bin/                kubeadm, kubelet, kubectl (built from Debian's `kubernetes` source
#                       package, v1.20.2, static), conntrack, socat, ethtool (Debian's)
#   cni/                the CNI plugins of Debian's containernetworking-plugins
#   cri/containerd.tar.gz  bin/containerd, containerd-shim-runc-v2, ctr (Debian's containerd)
#                       and bin/runc (Debian's runc)
#   registry/           docker distribution's storage (docker/registry/v2/...) holding the images
#                       kubeadm asks for: kube-apiserver, kube-controller-manager, kube-scheduler,
#                       kube-proxy (v1.20.2), pause:3.2, etcd:3.4.13-0, each a single-layer image
#                       made here from the binaries above and Debian's packages
#   etc/                kubeadm.yml, kubelet.service, 10-kubeadm.conf, config.toml (containerd),
#                       hosts.toml, containerd.service, 10-containerd-net.conflist (CNI),
#                       registry_config.yml
#   statics/            audit-policy.yml (kubeadm.yml's API server expects it)
#   Kubefile, README.md  sealer's build file; where each file goes on a node, with provenance
#
# Not there, because Debian 12 has neither: CoreDNS (kubeadm's coredns addon: skip the phase,
# `kubeadm init --skip-phases=addon/coredns`) and crictl (kubeadm's preflight image pull needs it:
# `--skip-phases=preflight`).
#
# Nothing is downloaded from outside Debian's archive. The packages used only as inputs are
# fetched with `apt-get download` / `apt-get source` into the cache and never installed; the
# tools the build runs (golang-go, rsync, jq, skopeo, docker-registry, gcc, ...) are installed
# with `apt-get install --no-install-recommends` when missing.
#
#   cache  $KUBEFERRY_EXAMPLE_CACHE, default target/example-cache/ in this repository (shared
#          with mini.sh; layout in lib.sh). Each step keeps its output there with the sha256 of
#          its inputs (source and .deb files, the step's shell function, versions): a second run
#          with the same inputs rebuilds nothing and takes seconds. Building Kubernetes took
#          11 to 15 minutes on 2 shared cores; the rest under a minute.
#          KUBEFERRY_EXAMPLE_REFRESH=1 fetches the archive's current packages again (a step
#          whose packages did not change is still not rebuilt).
#
# OUT_DIR is written afresh from the cached steps into a temporary sibling, then swapped in; an
# existing OUT_DIR is replaced only if this script made it.
set -euo pipefail
export LC_ALL=C
umask 022

LOG_PREFIX=build.sh
MARKER="# kubeferry example rootfs (build.sh)"
K8S_VERSION=v1.20.2
REGISTRY=sea.hub:5000
REPOSITORY=library
IMAGE_REPOSITORY="$REGISTRY/$REPOSITORY"
PAUSE_TAG=3.2
ETCD_TAG=3.4.13-0
# What `make` builds; the control-plane binaries go into the images.
K8S_WHAT="cmd/kubeadm cmd/kubelet cmd/kubectl cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kube-proxy"
K8S_BINARIES=(kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

# --- step: Kubernetes from Debian's source package ----------------------------------------------

# build_kubernetes OUT DSC REFLECT2_DEB: builds K8S_WHAT from the source package as its
# debian/rules does, with two changes: the vendored github.com/modern-go/reflect2 v1.0.1 (it
# panics under Go 1.18+ in reflect2.(*frozenConfig).Type2, so kubeadm dies at kubelet-start) is
# replaced by Debian's v1.0.2, and the kubelet is linked statically like the other binaries.
build_kubernetes() {
  local out="$1" dsc="$2" reflect2_deb="$3"
  local work="$cache/work/kubernetes" r2 b t0
  rm -rf "$work/src" "$work/reflect2"
  mkdir -p "$work/home" "$work/go-build"
  dpkg-source -x "$dsc" "$work/src"
  dpkg-deb -x "$reflect2_deb" "$work/reflect2"
  r2="$work/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2"
  test -f "$r2/reflect2.go"
  rm -rf "$work/src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$work/src/vendor/github.com/modern-go/reflect2"
  find "$r2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name LICENSE \) ! -name '*_test.go' \
    -exec cp {} "$work/src/vendor/github.com/modern-go/reflect2/" \;
  cd "$work/src"
  mkdir -p .go/src/k8s.io
  ln -s ../../.. .go/src/k8s.io/kubernetes
  go version
  t0=$(date +%s)
  env GOPATH="$PWD/.go" HOME="$work/home" GOCACHE="$work/go-build" PATH="/usr/lib/go/bin:$PATH" \
    KUBE_GIT_VERSION="$K8S_VERSION" KUBE_STATIC_OVERRIDES=kubelet \
    make WHAT="$K8S_WHAT"
  mkdir -p "$out/bin"
  for b in "${K8S_BINARIES[@]}"; do
    install -m 0755 "_output/bin/$b" "$out/bin/$b"
  done
  install -m 0644 build/pause/linux/pause.c "$out/pause.c"
  {
    printf 'source: %s\n' "$(basename "$dsc")"
    printf 'reflect2: %s\n' "$(basename "$reflect2_deb")"
    printf 'go: %s\n' "$(go version)"
    printf 'make_seconds: %s\n' "$(($(date +%s) - t0))"
    printf 'nproc: %s\n' "$(nproc)"
  } >"$out/build-info.txt"
  cd /
  rm -rf "$work/src" "$work/reflect2"
}

step_kubernetes() {
  local dsc reflect2_deb key
  ensure_packages golang-go rsync jq dpkg-dev make
  dsc="$(fetch_source kubernetes)"
  fetch_debs amd64 golang-github-modern-go-reflect2-dev ||
    die "could not fetch golang-github-modern-go-reflect2-dev from the Debian archive"
  reflect2_deb="$(deb_any golang-github-modern-go-reflect2-dev amd64)"
  key="$(inputs_key fn:build_kubernetes "$dsc" "$reflect2_deb" "$K8S_VERSION" "$K8S_WHAT" \
    "${K8S_BINARIES[*]}" "golang-go $(dpkg-query -W -f='${Version}' golang-go)" "$(go version)")"
  step kubernetes "$key" build_kubernetes "$dsc" "$reflect2_deb"
  K8S_OUT="$STEP_OUT"
}

# --- step: the runtime and the node's tools from Debian's binary packages ---------------------

RUNTIME_DEBS=(containerd runc conntrack socat ethtool containernetworking-plugins)

# build_runtime OUT DEB...: cri/containerd.tar.gz (containerd's release layout, bin/ flat: the
# three containerd executables and runc), bin/ (conntrack, socat, ethtool), cni/ (every plugin of
# containernetworking-plugins), etc/config.toml (`containerd config default` with this image's
# settings), etc/containerd.service (Debian's unit, pointed at /usr/local/bin).
build_runtime() {
  local out="$1" work="$cache/work/runtime" d pkg tool f
  shift
  rm -rf "$work"
  mkdir -p "$work/stage/bin" "$out/cri" "$out/bin" "$out/cni" "$out/etc"
  for d in "$@"; do
    pkg="$(dpkg-deb -f "$d" Package)"
    mkdir -p "$work/$pkg"
    dpkg-deb -x "$d" "$work/$pkg"
    printf '| %s | %s | %s |\n' "$pkg" "$(dpkg-deb -f "$d" Version)" "$(dpkg-deb -f "$d" Depends)" >>"$out/provenance.md"
  done
  for tool in containerd containerd-shim-runc-v2 ctr; do
    install -m 0755 "$work/containerd/usr/bin/$tool" "$work/stage/bin/$tool"
  done
  install -m 0755 "$work/runc/usr/sbin/runc" "$work/stage/bin/runc"
  deterministic_tgz "$work/stage" bin >"$out/cri/containerd.tar.gz"
  install -m 0755 "$work/conntrack/usr/sbin/conntrack" "$out/bin/conntrack"
  install -m 0755 "$work/socat/usr/bin/socat" "$out/bin/socat"
  install -m 0755 "$work/ethtool/sbin/ethtool" "$out/bin/ethtool"
  for f in "$work/containernetworking-plugins/usr/lib/cni"/*; do
    install -m 0755 "$f" "$out/cni/$(basename "$f")"
  done
  for f in "$work/stage/bin"/* "$out/bin"/* "$out/cni"/*; do
    [ "$(elf_machine "$f")" = "3e 00" ] || { echo "'$f' is not an amd64 executable"; return 1; }
  done
  upstream_version "$(deb containerd amd64)" >"$out/containerd-version"

  # containerd's own defaults, with what this image needs changed; each change is checked.
  "$work/containerd/usr/bin/containerd" config default >"$work/config.default.toml"
  sed -e "s|^\( *sandbox_image = \).*|\1\"$IMAGE_REPOSITORY/pause:$PAUSE_TAG\"|" \
    -e 's|^\( *bin_dir = \).*|\1"/opt/cni/bin"|' \
    -e 's|^\( *conf_dir = \).*|\1"/etc/cni/net.d"|' \
    -e 's|^\( *SystemdCgroup = \).*|\1true|' \
    -e 's|^\( *config_path = \)""$|\1"/etc/containerd/certs.d"|' \
    "$work/config.default.toml" >"$work/config.toml"
  for f in "sandbox_image = \"$IMAGE_REPOSITORY/pause:$PAUSE_TAG\"" 'bin_dir = "/opt/cni/bin"' \
    'conf_dir = "/etc/cni/net.d"' 'SystemdCgroup = true' 'config_path = "/etc/containerd/certs.d"'; do
    grep -qF "$f" "$work/config.toml" || { echo "containerd's default configuration has no place for: $f"; return 1; }
  done
  {
    printf '# containerd %s configuration for this cluster image: /etc/containerd/config.toml on a node.\n' \
      "$(cat "$out/containerd-version")"
    # shellcheck disable=SC2016 # the backquotes are text
    printf '# Made by build.sh from `containerd config default`, changed: sandbox_image (the bundled pause\n'
    printf '# image), the CNI directories, runc with SystemdCgroup = true (the kubelet uses cgroupDriver:\n'
    printf '# systemd) and the registry hosts directory (certs.d/%s/hosts.toml).\n' "$REGISTRY"
    cat "$work/config.toml"
  } >"$out/etc/config.toml"

  sed 's|^ExecStart=/usr/bin/containerd$|ExecStart=/usr/local/bin/containerd|' \
    "$work/containerd/lib/systemd/system/containerd.service" >"$out/etc/containerd.service"
  grep -q '^ExecStart=/usr/local/bin/containerd$' "$out/etc/containerd.service" ||
    { echo "Debian's containerd.service changed: its ExecStart is not /usr/bin/containerd"; return 1; }
  rm -rf "$work"
}

step_runtime() {
  local debs_list=() pkg key
  fetch_debs amd64 "${RUNTIME_DEBS[@]}" || die "could not fetch ${RUNTIME_DEBS[*]} from the Debian archive"
  for pkg in "${RUNTIME_DEBS[@]}"; do debs_list+=("$(deb "$pkg" amd64)"); done
  key="$(inputs_key fn:build_runtime fn:deterministic_tgz fn:elf_machine fn:upstream_version \
    "${debs_list[@]}" "$IMAGE_REPOSITORY" "$PAUSE_TAG" "$REGISTRY")"
  step runtime "$key" build_runtime "${debs_list[@]}"
  RUNTIME_OUT="$STEP_OUT"
}

# --- step: the control-plane images, pushed into a registry's storage ---------------------------

# Debian packages the images take files from: the C library and loader, iptables and conntrack
# with their libraries (kube-proxy), etcd, netbase (/etc/protocols, for iptables).
IMAGE_DEBS=(libc6 iptables libip4tc2 libip6tc2 libxtables12 libmnl0 libnetfilter-conntrack3
  libnfnetlink0 libnftnl11 conntrack etcd-server netbase)
IMAGE_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
OCI_CONFIG=application/vnd.oci.image.config.v1+json
OCI_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

# copy_path SYSROOT DEST PATH: copies PATH (absolute, inside SYSROOT) to the same path under DEST;
# a symbolic link is copied as a link and its target (resolved inside SYSROOT) too.
copy_path() {
  local sysroot="$1" dest="$2" path target
  path="$(realpath -m -s "$3")"
  if [ -e "$dest$path" ] || [ -L "$dest$path" ]; then return 0; fi
  [ -e "$sysroot$path" ] || [ -L "$sysroot$path" ] || { echo "'$path' is not in '$sysroot'"; return 1; }
  mkdir -p "$dest$(dirname "$path")"
  if [ -L "$sysroot$path" ]; then
    cp -P "$sysroot$path" "$dest$path"
    target="$(readlink "$sysroot$path")"
    case "$target" in
      /*) ;;
      *) target="$(dirname "$path")/$target" ;;
    esac
    copy_path "$sysroot" "$dest" "$target"
  else
    cp -p "$sysroot$path" "$dest$path"
  fi
}

# copy_libs SYSROOT DEST FILE...: copies the loader and the shared libraries each FILE (an
# executable or library at DEST/FILE) needs, as SYSROOT's loader finds them, into DEST. Static
# executables need none.
copy_libs() {
  local sysroot="$1" dest="$2" f list lib
  shift 2
  for f in "$@"; do
    cp "$dest$f" "$sysroot/.probe"
    if ! list="$(chroot "$sysroot" /lib64/ld-linux-x86-64.so.2 --list /.probe 2>&1)"; then
      rm -f "$sysroot/.probe"
      case "$list" in
        *"not a dynamic executable"*) continue ;;
        *) echo "the loader cannot list what '$f' needs: $list"; return 1 ;;
      esac
    fi
    rm -f "$sysroot/.probe"
    if grep -q 'not found' <<<"$list"; then
      echo "'$f' needs libraries that are not in the image's packages:"
      grep 'not found' <<<"$list"
      return 1
    fi
    while read -r lib; do
      copy_path "$sysroot" "$dest" "$lib"
    done < <(sed -n -e 's/^.* => \(\/[^ ]*\) (0x.*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*$/\1/p' <<<"$list")
  done
}

# blob LAYOUT FILE: moves FILE into the OCI layout's blobs and prints "sha256:HEX SIZE".
blob() {
  local hex size
  hex="$(sha256sum <"$2" | cut -c1-64)"
  size="$(stat -c %s "$2")"
  mkdir -p "$1/blobs/sha256"
  mv "$2" "$1/blobs/sha256/$hex"
  printf 'sha256:%s %s\n' "$hex" "$size"
}

# oci_image ROOTFS LAYOUT TAG ENTRYPOINT_JSON: makes the OCI image layout LAYOUT holding one
# single-layer amd64 image of ROOTFS, tagged TAG. Deterministic: sorted, mtime 0, owner root,
# gzip -n, no timestamps in the JSON. Prints "MANIFEST_DIGEST LAYER_GZIP_BYTES LAYER_TAR_BYTES".
oci_image() {
  local rootfs="$1" layout="$2" tag="$3" entrypoint="$4" tmp diff_id layer_digest layer_size
  local config_digest config_size manifest_digest manifest_size raw_size
  tmp="$layout.tmp"
  rm -rf "$layout" "$tmp"
  mkdir -p "$layout" "$tmp"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$tmp/layer.tar" .
  raw_size="$(stat -c %s "$tmp/layer.tar")"
  diff_id="sha256:$(sha256sum <"$tmp/layer.tar" | cut -c1-64)"
  gzip -n -6 <"$tmp/layer.tar" >"$tmp/layer.tar.gz"
  rm "$tmp/layer.tar"
  read -r layer_digest layer_size < <(blob "$layout" "$tmp/layer.tar.gz")
  jq -cn --arg diff "$diff_id" --arg path "PATH=$IMAGE_PATH" --argjson entry "$entrypoint" \
    '{architecture: "amd64", os: "linux",
      config: {Env: [$path], Entrypoint: $entry, WorkingDir: "/"},
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created_by: "kubeferry packaging/example-rootfs/build.sh"}]}' >"$tmp/config.json"
  read -r config_digest config_size < <(blob "$layout" "$tmp/config.json")
  jq -cn --arg cm "$OCI_CONFIG" --arg cd "$config_digest" --argjson cs "$config_size" \
    --arg lm "$OCI_LAYER" --arg ld "$layer_digest" --argjson ls "$layer_size" --arg mm "$OCI_MANIFEST" \
    '{schemaVersion: 2, mediaType: $mm, config: {mediaType: $cm, digest: $cd, size: $cs},
      layers: [{mediaType: $lm, digest: $ld, size: $ls}]}' >"$tmp/manifest.json"
  read -r manifest_digest manifest_size < <(blob "$layout" "$tmp/manifest.json")
  jq -cn --arg mm "$OCI_MANIFEST" --arg md "$manifest_digest" --argjson ms "$manifest_size" --arg tag "$tag" \
    '{schemaVersion: 2, manifests: [{mediaType: $mm, digest: $md, size: $ms,
      annotations: {"org.opencontainers.image.ref.name": $tag}}]}' >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  rm -rf "$tmp"
  printf '%s %s %s\n' "$manifest_digest" "$layer_size" "$raw_size"
}

# start_registry STORAGE DIR: Debian's docker-registry (distribution) on a free 127.0.0.1 port,
# storing under STORAGE; sets REGISTRY_PID and REGISTRY_PORT. DIR holds its configuration and log.
start_registry() {
  local storage="$1" dir="$2" port
  for port in $(seq 35000 35100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi # taken
    printf '%s\n' "version: 0.1" "log:" "  level: warn" "storage:" "  filesystem:" \
      "    rootdirectory: $storage" "  delete:" "    enabled: false" "http:" "  addr: 127.0.0.1:$port" \
      >"$dir/registry.yml"
    /usr/bin/docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
    REGISTRY_PID=$!
    for _ in $(seq 1 100); do
      if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then break; fi
      if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
        REGISTRY_PORT=$port
        return 0
      fi
      sleep 0.1
    done
    stop_registry
  done
  echo "could not start docker-registry on a port of 127.0.0.1:35000-35100; its log:"
  cat "$dir/registry.log"
  return 1
}

stop_registry() {
  if [ -n "${REGISTRY_PID:-}" ]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    REGISTRY_PID=
  fi
}

# build_images OUT K8S_BIN_DIR PAUSE_C DEB...: makes the six images kubeadm 1.20 pulls, each a
# single-layer OCI image, pushes them with skopeo into a docker-registry on loopback and keeps
# that registry's storage as OUT/registry. OUT/images.tsv lists them.
build_images() {
  local out="$1" kbin="$2" pause_c="$3" work="$cache/work/images" sysroot d name tag r
  shift 3
  rm -rf "$work"
  mkdir -p "$work/rootfs" "$work/oci" "$work/storage"
  sysroot="$work/sysroot"
  mkdir -p "$sysroot"
  for d in "$@"; do
    dpkg-deb -x "$d" "$sysroot"
    printf '| %s | %s |\n' "$(dpkg-deb -f "$d" Package)" "$(dpkg-deb -f "$d" Version)" >>"$out/provenance.md"
  done

  # pause: the Kubernetes tree's pause.c, static. The source is pause 3.4's; kubeadm 1.20 asks
  # for the tag 3.2, whose pause.c differs only in comments and the version string.
  r="$work/rootfs/pause"
  mkdir -p "$r"
  gcc -Os -Wall -Werror -static "-DVERSION=v3.4-kubernetes-$K8S_VERSION" -o "$r/pause" "$pause_c"
  strip "$r/pause"
  chroot "$r" /pause -v

  # etcd: Debian's etcd-server with the C library it is linked against.
  r="$work/rootfs/etcd"
  mkdir -p "$r/usr/local/bin" "$r/var/lib/etcd"
  install -d -m 1777 "$r/tmp"
  install -m 0755 "$sysroot/usr/bin/etcd" "$r/usr/local/bin/etcd"
  copy_libs "$sysroot" "$r" /usr/local/bin/etcd
  chroot "$r" /usr/local/bin/etcd --version

  # kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy: static binaries.
  for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    r="$work/rootfs/$name"
    mkdir -p "$r/usr/local/bin"
    install -d -m 1777 "$r/tmp"
    install -m 0755 "$kbin/$name" "$r/usr/local/bin/$name"
    if readelf -l "$r/usr/local/bin/$name" | grep -e 'program interpreter' >/dev/null; then
      echo "'$kbin/$name' is not a static executable"
      return 1
    fi
    chroot "$r" "/usr/local/bin/$name" --version
  done

  # kube-proxy also needs iptables (iptables, -save, -restore and the ip6 ones are nf_tables, as
  # on Debian 12 hosts; the -legacy ones are there too), its extensions, and conntrack.
  r="$work/rootfs/kube-proxy"
  for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    copy_path "$sysroot" "$r" "/usr/sbin/${name%%-*}-nft${name#"${name%%-*}"}"
    copy_path "$sysroot" "$r" "/usr/sbin/${name%%-*}-legacy${name#"${name%%-*}"}"
    ln -s xtables-nft-multi "$r/usr/sbin/$name"
  done
  mkdir -p "$r/usr/lib/x86_64-linux-gnu"
  cp -a "$sysroot/usr/lib/x86_64-linux-gnu/xtables" "$r/usr/lib/x86_64-linux-gnu/"
  copy_path "$sysroot" "$r" /usr/sbin/conntrack
  copy_path "$sysroot" "$r" /etc/protocols
  # shellcheck disable=SC2046 # one argument per extension
  copy_libs "$sysroot" "$r" /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/conntrack \
    $(cd "$r" && find usr/lib/x86_64-linux-gnu/xtables -name '*.so' | sort | sed 's|^|/|')
  chroot "$r" /usr/sbin/iptables --version
  chroot "$r" /usr/sbin/iptables-legacy --version
  chroot "$r" /usr/sbin/ip6tables-restore --version
  chroot "$r" /usr/sbin/conntrack --version

  # The OCI layouts, then the registry.
  printf 'name\ttag\tmanifest\tlayer_gzip_bytes\tlayer_tar_bytes\n' >"$out/images.tsv"
  for r in "kube-apiserver $K8S_VERSION" "kube-controller-manager $K8S_VERSION" \
    "kube-scheduler $K8S_VERSION" "kube-proxy $K8S_VERSION" "pause $PAUSE_TAG" "etcd $ETCD_TAG"; do
    read -r name tag <<<"$r"
    case "$name" in
      pause) d='["/pause"]' ;;
      *) d="[\"/usr/local/bin/$name\"]" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$tag" "$(oci_image "$work/rootfs/$name" "$work/oci/$name" "$tag" "$d" | tr ' ' '\t')" \
      >>"$out/images.tsv"
  done

  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$work/policy.json"
  trap stop_registry EXIT
  start_registry "$work/storage" "$work"
  tail -n +2 "$out/images.tsv" | while IFS=$'\t' read -r name tag _; do
    echo "pushing $REPOSITORY/$name:$tag"
    REGISTRY_AUTH_FILE="$work/auth.json" skopeo --policy "$work/policy.json" copy --quiet \
      --dest-tls-verify=false "oci:$work/oci/$name:$tag" "docker://127.0.0.1:$REGISTRY_PORT/$REPOSITORY/$name:$tag" </dev/null
    REGISTRY_AUTH_FILE="$work/auth.json" skopeo --policy "$work/policy.json" inspect --raw \
      --tls-verify=false "docker://127.0.0.1:$REGISTRY_PORT/$REPOSITORY/$name:$tag" </dev/null >/dev/null
  done
  stop_registry
  trap - EXIT
  mv "$work/storage" "$out/registry"
  du -sb "$work/rootfs"/* | sed "s|$work/rootfs/||" >"$out/rootfs-sizes.txt"
  rm -rf "$work"
}

step_images() {
  local debs_list=() pkg key
  ensure_packages gcc libc6-dev binutils jq skopeo docker-registry curl
  fetch_debs amd64 "${IMAGE_DEBS[@]}" || die "could not fetch ${IMAGE_DEBS[*]} from the Debian archive"
  for pkg in "${IMAGE_DEBS[@]}"; do debs_list+=("$(deb_any "$pkg" amd64)"); done
  key="$(inputs_key fn:build_images fn:copy_path fn:copy_libs fn:blob fn:oci_image fn:start_registry \
    fn:stop_registry "kubernetes $(cat "$cache/steps/kubernetes/inputs.sha256")" "${debs_list[@]}" \
    "$K8S_VERSION" "$PAUSE_TAG" "$ETCD_TAG" "$REPOSITORY" "$IMAGE_PATH" \
    "gcc $(dpkg-query -W -f='${Version}' gcc libc6-dev)" "skopeo $(dpkg-query -W -f='${Version}' skopeo)" \
    "docker-registry $(dpkg-query -W -f='${Version}' docker-registry)")"
  step images "$key" build_images "$K8S_OUT/bin" "$K8S_OUT/pause.c" "${debs_list[@]}"
  IMAGES_OUT="$STEP_OUT"
}

# --- the rootfs ----------------------------------------------------------------------------------

# write_etc DIR CONTAINERD_VERSION: the configuration files of etc/ and statics/ that are text
# written here (config.toml and containerd.service come from the runtime step).
write_etc() {
  local new="$1"
  mkdir -p "$new/etc" "$new/statics"

  # kubeadm's configuration, sealer's default etc/kubeadm.yml adapted to this image.
  cat >"$new/etc/kubeadm.yml" <<EOF
# kubeadm's configuration for this cluster image (Kubernetes $K8S_VERSION, kubeadm.k8s.io/v1beta2):
# sealer's default etc/kubeadm.yml with containerd's socket, this image's registry, the pod
# subnet of etc/10-containerd-net.conflist, the systemd cgroup driver and iptables kube-proxy.
# Before it, the node needs statics/audit-policy.yml as /etc/kubernetes/audit-policy.yml.
# There is no CoreDNS image (Debian has no CoreDNS): kubeadm init --skip-phases=addon/coredns.
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
imageRepository: $IMAGE_REPOSITORY
networking:
  # dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/22
apiServer:
  # kubeadm's default is 4m0s. A control plane that starts under emulation (qemu without KVM)
  # needs more; in 1.20 this also sets the static pods' startup probes.
  timeoutForControlPlane: 20m0s
  #  certSANs:
  #    - 127.0.0.1
  #    - apiserver.cluster.local
  extraArgs:
    #    etcd-servers: https://192.168.2.110:2379
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
# iptables, not sealer's ipvs: the kube-proxy image carries iptables and conntrack, not ipset,
# and ipvs needs the ip_vs kernel modules on the node.
mode: "iptables"
EOF
  kubeadm_kubelet_and_join_documents >>"$new/etc/kubeadm.yml"

  # The pod network: one bridge per node, addresses from host-local. containerd's CRI reads the
  # first file of /etc/cni/net.d and runs the plugins from /opt/cni/bin (cni/ of this image).
  # Hairpin mode, not promiscuous mode: the bridge plugin refuses both at once ("cannot set
  # hairpin mode and promiscuous mode at the same time"), as the air-gapped VM test found.
  cat >"$new/etc/10-containerd-net.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.244.0.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    },
    {
      "type": "loopback"
    }
  ]
}
EOF

  cat >"$new/etc/hosts.toml" <<EOF
# The cluster's registry for containerd: /etc/containerd/certs.d/$REGISTRY/hosts.toml on a node.
# The registry (etc/registry_config.yml, or kubeferry's own) serves plain HTTP on port 5000.
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF

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

  cat >"$new/statics/audit-policy.yml" <<'EOF'
# The API server's audit policy: etc/kubeadm.yml points the API server at
# /etc/kubernetes/audit-policy.yml, so a node needs this file there before kubeadm init.
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
}

# write_readme DIR CONTAINERD_VERSION: README.md of the rootfs (the marker line first).
write_readme() {
  local new="$1" containerd_version="$2" name tag digest gz raw
  {
    cat <<EOF
$MARKER

A working cluster image in the sealer/sealos CloudRootfs layout: Kubernetes $K8S_VERSION with
containerd $containerd_version, made by \`packaging/example-rootfs/build.sh\` from Debian 12's
packages only (see docs/example-rootfs.md in kubeferry's repository). amd64.

Not in it, because Debian 12 has neither: CoreDNS (run \`kubeadm init\` with
\`--skip-phases=addon/coredns\`) and crictl (kubeadm's preflight image pull needs it: skip that
phase too, \`--skip-phases=preflight,addon/coredns\`).

## Where each file goes on a node

| here | on the node |
|---|---|
| \`bin/kubeadm\`, \`bin/kubelet\`, \`bin/kubectl\` | /usr/bin/ (built from Debian's \`kubernetes\` source, static) |
| \`bin/conntrack\`, \`bin/socat\`, \`bin/ethtool\` | /usr/bin/ (Debian's builds: they need the Debian 12 libraries in their Depends, below) |
| \`cni/*\` | /opt/cni/bin/ (Debian's containernetworking-plugins; etc/config.toml's bin_dir) |
| \`cri/containerd.tar.gz\` | \`tar -xzf cri/containerd.tar.gz -C /usr/local\`: bin/containerd, containerd-shim-runc-v2, ctr, runc |
| \`etc/config.toml\` | /etc/containerd/config.toml |
| \`etc/hosts.toml\` | /etc/containerd/certs.d/$REGISTRY/hosts.toml |
| \`etc/containerd.service\` | /etc/systemd/system/containerd.service |
| \`etc/10-containerd-net.conflist\` | /etc/cni/net.d/10-containerd-net.conflist |
| \`etc/kubelet.service\`, \`etc/10-kubeadm.conf\` | /etc/systemd/system/kubelet.service, kubelet.service.d/10-kubeadm.conf |
| \`statics/audit-policy.yml\` | /etc/kubernetes/audit-policy.yml |
| \`etc/kubeadm.yml\` | \`kubeadm init --config\` (sets advertiseAddress first) |
| \`registry/\` | the storage of the registry $REGISTRY (\`etc/registry_config.yml\`, or kubeferry's \`serve-registry\`) |

## Images in registry/

| image | manifest | layer (gzip) | layer (tar) |
|---|---|---|---|
EOF
    tail -n +2 "$IMAGES_OUT/images.tsv" | while IFS=$'\t' read -r name tag digest gz raw; do
      printf '| %s/%s:%s | %s | %s | %s |\n' "$IMAGE_REPOSITORY" "$name" "$tag" "$digest" "$gz" "$raw"
    done
    cat <<EOF

Each is one layer made from the binaries: kube-apiserver, kube-controller-manager,
kube-scheduler and kube-proxy are the static executables built with bin/; kube-proxy also holds
Debian's iptables (nf_tables as \`iptables\`, and \`iptables-legacy\`) and conntrack with their
libraries; pause is \`gcc -static\` of the Kubernetes tree's build/pause/linux/pause.c; etcd is
Debian's etcd-server (3.4.23, tagged $ETCD_TAG as kubeadm 1.20 asks) with its C library.

## Provenance

Kubernetes: $(tr '\n' ';' <"$K8S_OUT/build-info.txt" | sed 's/;$//; s/;/; /g')

| Debian package | version | Depends |
|---|---|---|
EOF
    cat "$RUNTIME_OUT/provenance.md"
    printf '\nIn the images:\n\n| Debian package | version |\n|---|---|\n'
    cat "$IMAGES_OUT/provenance.md"
  } >"$new/README.md"
}

# check_rootfs DIR: what can be checked on the build host.
check_rootfs() {
  local new="$1" version listed expected
  version="$("$new/bin/kubeadm" version -o short)"
  [ "$version" = "$K8S_VERSION" ] || die "bin/kubeadm is version '$version', expected '$K8S_VERSION'"
  # The kubelet's defaults warn on stderr that there is no docker to ask for its cgroup driver.
  if ! listed="$("$new/bin/kubeadm" config print init-defaults --component-configs KubeletConfiguration 2>&1)"; then
    printf '%s\n' "$listed" | tail -n 20 >&2
    die "kubeadm cannot print its KubeletConfiguration (the reflect2 panic?)"
  fi
  # Its output also has a warning that it ignores the JoinConfiguration; the images' lines are
  # those that start with the repository.
  listed="$("$new/bin/kubeadm" config images list --config "$new/etc/kubeadm.yml" 2>/dev/null |
    grep "^$IMAGE_REPOSITORY/" | grep -v "^$IMAGE_REPOSITORY/coredns:" | sort)"
  expected="$(tail -n +2 "$IMAGES_OUT/images.tsv" | while IFS=$'\t' read -r name tag _; do
    printf '%s/%s:%s\n' "$IMAGE_REPOSITORY" "$name" "$tag"
  done | sort)"
  [ "$listed" = "$expected" ] ||
    die "kubeadm asks for other images than registry/ holds: it lists $(tr '\n' ' ' <<<"$listed"), registry/ holds $(tr '\n' ' ' <<<"$expected")"
  log "checked: kubeadm $version; kubeadm config images list matches registry/ (CoreDNS apart)"
}

# --- main ----------------------------------------------------------------------------------------

setup_cache() {
  cache="${KUBEFERRY_EXAMPLE_CACHE:-$repo/target/example-cache}"
  mkdir -p "$cache"
  cache="$(cd "$cache" && pwd)"
  debs_init
  if [ "${KUBEFERRY_EXAMPLE_REFRESH:-0}" = 1 ]; then
    rm -f "$cache/debs"/*.deb
  fi
}

main() {
  local out new containerd_version start=$SECONDS b
  if [ $# -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
    echo "usage: $0 ARCH OUT_DIR    (ARCH: amd64)" >&2
    exit 2
  fi
  case "$1" in
    amd64) ;;
    arm64) die "arm64 is not supported yet: build.sh builds the amd64 image only" \
      "build amd64, or use mini.sh for the miniature (not working) rootfs that has arm64" ;;
    *) echo "error: unknown ARCH '$1' (expected amd64)" >&2; exit 2 ;;
  esac
  out="${2%/}"
  case "$out" in
    "" | / | . | ..) echo "error: refusing OUT_DIR '$2'" >&2; exit 2 ;;
  esac
  [ "$(dpkg --print-architecture)" = amd64 ] ||
    die "build.sh builds on an amd64 Debian machine; this one is '$(dpkg --print-architecture)'"
  [ "$(id -u)" = 0 ] || die "build.sh runs as root" \
    "it installs the Debian packages it builds with, and checks the images' files with chroot"
  for b in apt-get dpkg-deb dpkg-query tar gzip sha256sum chroot realpath; do
    command -v "$b" >/dev/null || die "'$b' is needed (build.sh expects Debian 12)"
  done
  if [ -e "$out" ]; then
    [ -d "$out" ] || die "'$out' exists and is not a directory"
    if [ -n "$(ls -A "$out")" ] && ! head -n 1 "$out/README.md" 2>/dev/null | grep -xF "$MARKER" >/dev/null; then
      die "'$out' is not empty and was not made by build.sh; not replacing it"
    fi
  fi

  setup_cache
  log "cache: $cache"
  step_kubernetes
  step_runtime
  step_images

  mkdir -p "$(dirname "$out")"
  # Global: the EXIT trap runs after main has returned.
  WORK="$(mktemp -d "$(dirname "$out")/.$(basename "$out").tmp.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  new="$WORK/rootfs"
  log "writing $out"
  mkdir -p "$new/bin" "$new/cri"
  for b in kubeadm kubelet kubectl; do
    cp "$K8S_OUT/bin/$b" "$new/bin/$b"
  done
  cp "$RUNTIME_OUT/bin"/* "$new/bin/"
  cp -r "$RUNTIME_OUT/cni" "$new/cni"
  cp "$RUNTIME_OUT/cri/containerd.tar.gz" "$new/cri/"
  write_etc "$new"
  cp "$RUNTIME_OUT/etc"/* "$new/etc/"
  cp -r "$IMAGES_OUT/registry" "$new/registry"
  containerd_version="$(cat "$RUNTIME_OUT/containerd-version")"
  cat >"$new/Kubefile" <<EOF
# The build file of this cluster image, in sealer's form: kubeferry build -f Kubefile.
FROM scratch
COPY . .
LABEL "cluster.alpha.sealer.io/cluster-runtime-version"="$K8S_VERSION"
LABEL "cluster.alpha.sealer.io/cluster-runtime-type"="kubernetes"
LABEL "cluster.alpha.sealer.io/container-runtime-type"="containerd"
LABEL "cluster.alpha.sealer.io/container-runtime-version"="$containerd_version"
EOF
  write_readme "$new" "$containerd_version"
  check_rootfs "$new"

  rm -rf "$out"
  mv "$new" "$out"
  log "wrote $out ($(du -sh "$out" | cut -f1)) in $((SECONDS - start)) s; parts:"
  du -sh "$out"/* | sed 's/^/  /' >&2
  log "steps (seconds when made): kubernetes $(cat "$cache/steps/kubernetes/seconds"), runtime $(cat "$cache/steps/runtime/seconds"), images $(cat "$cache/steps/images/seconds")"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
