# shellcheck shell=bash
# Shell functions shared by the example-rootfs scripts (mini.sh, build.sh). Source it; it
# defines functions and reads these variables, which the sourcing script sets first:
#
#   LOG_PREFIX  what every progress line starts with, e.g. "build.sh"
#   cache       the cache directory (absolute), $KUBEFERRY_EXAMPLE_CACHE or target/example-cache/
#
# Layout of the cache, shared by both scripts:
#
#   debs/            .deb files fetched with `apt-get download`, never installed
#   apt/             apt's package lists for those downloads (amd64 and arm64), and an empty
#                    dpkg status, so apt never looks at what this machine has installed
#   apt-src/         apt's lists of Debian's source packages (deb-src), for `apt-get source`
#   src/             source packages (.dsc, .orig.tar.*, .debian.tar.*)
#   steps/NAME/      one cached build step: out/ (what it made), inputs.sha256 (the hash of
#                    everything it was made from), seconds (how long it took), log
#   work/            scratch space of the steps
#
# Nothing here writes outside the cache except ensure_packages (apt-get install on this machine).

log() { printf '%s: %s\n' "$LOG_PREFIX" "$*" >&2; }
die() {
  printf 'error: %s\n' "$1" >&2
  [ $# -lt 2 ] || printf '\nhint: %s\n' "$2" >&2
  exit 1
}

# --- Debian packages on this machine ------------------------------------------------------------

# ensure_packages PKG...: installs those of the Debian packages that are not installed yet.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -x 'install ok installed' >/dev/null || missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "these Debian packages are needed and not installed: ${missing[*]}" \
    "run as root, or: apt-get install -y --no-install-recommends ${missing[*]}"
  log "installing ${missing[*]} (apt-get install --no-install-recommends)"
  local out
  if ! out="$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" 2>&1)"; then
    log "apt-get install failed; updating this machine's package lists and trying again"
    apt-get -qq update >&2 || die "apt-get update failed"
    out="$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" 2>&1)" || {
      printf '%s\n' "$out" | tail -n 20 >&2
      die "could not install ${missing[*]} (apt-get's last lines are above)"
    }
  fi
}

# --- .deb files in the cache (fetched, never installed) ------------------------------------------

apt_opts() {
  local opts=(
    -o "Dir::State::Lists=$cache/apt/lists"
    -o "Dir::State::status=$cache/apt/status"
    -o "Dir::Cache=$cache/apt/cache"
    -o "APT::Architecture=$(dpkg --print-architecture)"
    -o "APT::Architectures::=amd64"
    -o "APT::Architectures::=arm64"
    -o "Acquire::Languages=none"
  )
  # As root, apt would drop to the _apt user for downloads and warn that it cannot write here.
  if [ "$(id -u)" = 0 ]; then opts+=(-o "APT::Sandbox::User=root"); fi
  printf '%s\n' "${opts[@]}"
}

debs_init() {
  mkdir -p "$cache/debs" "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial"
  : >"$cache/apt/status" # an empty dpkg status: apt must not look at what this machine has installed
  mapfile -t APT_OPTS < <(apt_opts)
  APT_UPDATED=0
}

# deb PKG ARCH: the cached .deb's path, or nothing.
deb() {
  local found=("$cache/debs/$1_"*"_$2.deb")
  [ -f "${found[0]}" ] && printf '%s\n' "${found[-1]}"
}

# deb_any PKG ARCH: the cached .deb of PKG for ARCH or for "all".
deb_any() { deb "$1" "$2" || deb "$1" all; }

# fetch_debs ARCH PKG...: makes sure each package of ARCH (or of "all") is in the cache.
# Returns non-zero if apt cannot fetch them.
fetch_debs() {
  local arch="$1" missing=() pkg
  shift
  for pkg in "$@"; do
    [ -n "$(deb_any "$pkg" "$arch")" ] || missing+=("$pkg:$arch")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ "$APT_UPDATED" = 0 ]; then
    log "updating the package lists for amd64 and arm64 (in $cache/apt)"
    apt-get "${APT_OPTS[@]}" -qq update >&2 || return 1
    APT_UPDATED=1
  fi
  log "downloading ${missing[*]}"
  (cd "$cache/debs" && apt-get "${APT_OPTS[@]}" -qq download "${missing[@]}" >&2) || return 1
}

# upstream_version DEB: 1:1.4.7-1+b2 -> 1.4.7, 1.6.20~ds1-1+deb12u3 -> 1.6.20
upstream_version() {
  local v
  v="$(dpkg-deb -f "$1" Version)"
  v="${v#*:}"
  v="${v%%-*}"
  printf '%s\n' "${v%%~*}"
}

# --- Debian source packages ---------------------------------------------------------------------

# fetch_source PKG: downloads Debian's source package PKG into $cache/src (once) and prints the
# path of its .dsc. apt reads deb-src entries made from this machine's deb entries
# (/etc/apt/sources.list.d/*.sources and /etc/apt/sources.list) into $cache/apt-src, so this
# machine's apt configuration is not changed.
fetch_source() {
  local pkg="$1" src="$cache/apt-src" f found
  found=("$cache/src/${pkg}_"*.dsc)
  if [ -f "${found[0]}" ] && [ "${KUBEFERRY_EXAMPLE_REFRESH:-0}" != 1 ]; then
    printf '%s\n' "${found[-1]}"
    return 0
  fi
  mkdir -p "$src/lists/partial" "$src/cache/archives/partial" "$src/sources.list.d" "$cache/src"
  : >"$src/status"
  rm -f "$src/sources.list.d"/*
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed 's/^Types:.*/Types: deb-src/' "$f" >"$src/sources.list.d/$(basename "$f")"
  done
  : >"$src/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^deb \(.*\)$/deb-src \1/p' "$f" >>"$src/sources.list"
  done
  local opts=(
    -o "Dir::State::Lists=$src/lists" -o "Dir::State::status=$src/status" -o "Dir::Cache=$src/cache"
    -o "Dir::Etc::SourceList=$src/sources.list" -o "Dir::Etc::SourceParts=$src/sources.list.d"
    -o "Acquire::Languages=none"
  )
  if [ "$(id -u)" = 0 ]; then opts+=(-o "APT::Sandbox::User=root"); fi
  log "updating the source package lists (deb-src, in $src)"
  apt-get "${opts[@]}" -qq update >&2 || die "could not update the source package lists (deb-src)"
  log "downloading the source package $pkg"
  (cd "$cache/src" && apt-get "${opts[@]}" -qq --download-only source "$pkg" >&2) ||
    die "could not download Debian's source package '$pkg'"
  found=("$cache/src/${pkg}_"*.dsc)
  [ -f "${found[0]}" ] || die "apt-get source '$pkg' left no .dsc in '$cache/src'"
  printf '%s\n' "${found[-1]}"
}

# --- cached steps --------------------------------------------------------------------------------

# inputs_key ITEM...: the sha256 of a list of inputs. An ITEM naming a file stands for the file's
# content; "fn:NAME" for the text of shell function NAME (bash prints it without comments, so
# editing a comment does not invalidate a step); anything else for itself.
inputs_key() {
  local item
  for item in "$@"; do
    case "$item" in
      fn:*) declare -f "${item#fn:}" || die "no shell function '${item#fn:}'" ;;
      *)
        if [ -f "$item" ]; then
          printf 'file %s %s\n' "$(basename "$item")" "$(sha256sum <"$item" | cut -c1-64)"
        else
          printf 'value %s\n' "$item"
        fi
        ;;
    esac
  done | sha256sum | cut -c1-64
}

# step NAME KEY FUNCTION [ARG...]: runs FUNCTION OUT_DIR ARG... unless steps/NAME holds an
# output made from inputs with the same KEY; STEP_OUT is then steps/NAME/out. FUNCTION's output
# goes to steps/NAME/log. The output is made in steps/NAME.tmp and moved in place only when
# FUNCTION succeeded, so an interrupted step is redone. Never call `step` in a condition (`if`,
# `||`): bash would then ignore errors inside FUNCTION.
step() {
  local name="$1" key="$2" fn="$3" dir="$cache/steps/$1" t0
  shift 3
  # shellcheck disable=SC2034 # read by the caller
  STEP_OUT="$dir/out"
  if [ -d "$dir/out" ] && [ "$(cat "$dir/inputs.sha256" 2>/dev/null)" = "$key" ]; then
    log "$name: up to date (inputs ${key:0:12}, made in $(cat "$dir/seconds") s)"
    return 0
  fi
  log "$name: building (inputs ${key:0:12}; log: $dir.tmp/log)"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/out"
  t0=$SECONDS
  # Not `( ... ) || die`: inside a condition, bash ignores `set -e` even in a subshell.
  local rc=0
  set +e
  (
    set -e
    exec >"$dir.tmp/log" 2>&1
    "$fn" "$dir.tmp/out" "$@"
  )
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    tail -n 30 "$dir.tmp/log" >&2
    die "step '$name' failed (the last lines of its log are above; all of it: '$dir.tmp/log')"
  fi
  echo $((SECONDS - t0)) >"$dir.tmp/seconds"
  printf '%s\n' "$key" >"$dir.tmp/inputs.sha256"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  log "$name: done in $(cat "$dir/seconds") s"
}

# --- small helpers ------------------------------------------------------------------------------

# elf_machine FILE: the ELF e_machine field (little-endian), e.g. "3e 00" for x86-64.
elf_machine() { od -An -tx1 -j18 -N2 "$1" | tr -s ' ' | sed 's/^ //'; }

# Deterministic tar.gz of DIR's entry NAME: sorted, mtime 0, owner root, no gzip name/time.
deterministic_tgz() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode='go-w' \
    -C "$1" -cf - "$2" | gzip -n -6
}

# The KubeletConfiguration and JoinConfiguration documents of sealer's default etc/kubeadm.yml
# (containerd's socket), appended by both example images to their kubeadm.yml.
kubeadm_kubelet_and_join_documents() {
  cat <<'EOF'
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 2m0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 5m0s
    cacheUnauthorizedTTL: 30s
# containerd's runc runs with SystemdCgroup = true (etc/config.toml): the kubelet must match.
cgroupDriver: systemd
cgroupsPerQOS: true
clusterDomain: cluster.local
configMapAndSecretChangeDetectionStrategy: Watch
containerLogMaxFiles: 5
containerLogMaxSize: 10Mi
contentType: application/vnd.kubernetes.protobuf
cpuCFSQuota: true
cpuCFSQuotaPeriod: 100ms
cpuManagerPolicy: none
cpuManagerReconcilePeriod: 10s
enableControllerAttachDetach: true
enableDebuggingHandlers: true
enforceNodeAllocatable:
  - pods
eventBurst: 10
eventRecordQPS: 5
evictionHard:
  imagefs.available: 15%
  memory.available: 100Mi
  nodefs.available: 10%
  nodefs.inodesFree: 5%
evictionPressureTransitionPeriod: 5m0s
failSwapOn: true
fileCheckFrequency: 20s
hairpinMode: promiscuous-bridge
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 20s
imageGCHighThresholdPercent: 85
imageGCLowThresholdPercent: 80
imageMinimumGCAge: 2m0s
iptablesDropBit: 15
iptablesMasqueradeBit: 14
kubeAPIBurst: 10
kubeAPIQPS: 5
makeIPTablesUtilChains: true
maxOpenFiles: 1000000
maxPods: 110
nodeLeaseDurationSeconds: 40
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 10s
oomScoreAdj: -999
podPidsLimit: -1
port: 10250
registryBurst: 10
registryPullQPS: 5
rotateCertificates: true
runtimeRequestTimeout: 2m0s
serializeImagePulls: true
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 4h0m0s
syncFrequency: 1m0s
volumeStatsAggPeriod: 1m0s
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
caCertPath: /etc/kubernetes/pki/ca.crt
discovery:
  timeout: 5m0s
nodeRegistration:
  criSocket: /run/containerd/containerd.sock
controlPlane:
  localAPIEndpoint:
    bindPort: 6443
EOF
}
