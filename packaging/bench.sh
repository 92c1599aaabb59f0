#!/usr/bin/env bash
# Benchmarks kubeferry against the plain pipeline it replaces, on a generated cluster rootfs.
#
#   packaging/bench.sh [--size-gib N | --small-files N] [--runs N] [--work DIR] [--seed N] [--cold]
#                      [--no-build] [--max-busy PCT] [--wait SECONDS]
#
# In the same run it measures:
#   build           kubeferry build           vs  tar -cf - DIR | zstd -T0 -3
#   size            the .run bundle           vs  the .tar.zst
#   verify+extract  BUNDLE.run extract        vs  zstd -d | tar -x, then sha256sum -c
#   peak RSS        of every process of both sides (GNU time's maximum resident set size)
#
# kubeferry fsyncs its bundle before renaming it into place, and syncfs()s the extracted tree
# before renaming it into place; the pipeline does neither. The baseline's `sync FILE` and
# `sync -f DIR` are therefore timed as separate steps right after the pipeline (no sync in
# between) and the targets are judged both against the pipeline as the issue states it and
# against the pipeline made as durable.
#
# The rootfs (--size-gib, default 2; 0.05 makes a quick smoke run) is generated once by
# packaging/bench/gen-rootfs.sh into the work directory (default /tmp/kubeferry-bench, or
# $KUBEFERRY_BENCH_DIR) and reused while the size and seed are the same. A warm-up round of
# both sides comes first and is not counted; the measured rounds (--runs, default 4: keep it
# even) alternate which side goes first, and the medians are reported. Before every timed
# step its previous output is removed and its input is read once, so that both sides read
# from the page cache; --cold drops the caches instead (needs root). Then the script syncs
# and waits until the machine is idle (other processes below --max-busy percent of the
# CPUs, default 10); after the step, the CPU time that other processes used during it is
# computed from /proc/stat (kernel threads, such as writeback, not counted) and a round that
# was disturbed is run again.
# --small-files N generates instead N files of 200 bytes (packaging/bench/gen-small-files.sh),
# where a cost per entry shows; give it its own --work directory.
#
# Output: a table on stdout, and in the work directory results.txt, results.md (for
# docs/benchmarks.md) and results.tsv (every measurement). Needs cargo, zstd, tar,
# coreutils, GNU time (Debian: apt-get install -y zstd time), gzip, openssl and awk.
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "$0")/.." && pwd)"
size_gib="${KUBEFERRY_BENCH_SIZE_GIB:-2}"
work="${KUBEFERRY_BENCH_DIR:-/tmp/kubeferry-bench}"
runs="${KUBEFERRY_BENCH_RUNS:-4}"
seed=1
small_files=0
cold=0
build=1
max_busy=10
wait_max=1800
retries_max=5

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --size-gib) size_gib="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --small-files) small_files="$2"; shift 2 ;;
    --cold) cold=1; shift ;;
    --no-build) build=0; shift ;;
    --max-busy) max_busy="$2"; shift 2 ;;
    --wait) wait_max="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$runs$seed$max_busy$wait_max$small_files" in
  *[!0-9]*) echo "error: --runs, --seed, --small-files, --max-busy and --wait take integers" >&2; exit 2 ;;
esac
if ! size_bytes="$(awk -v g="$size_gib" 'BEGIN { if (g !~ /^[0-9]*\.?[0-9]+$/ || g <= 0) exit 1; printf "%.0f", g * 1073741824 }')"; then
  echo "error: --size-gib takes a positive number, not '$size_gib'" >&2
  exit 2
fi
(( runs >= 1 )) || { echo "error: --runs must be at least 1" >&2; exit 2; }

say() { printf '%s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------------------------

missing=()
for tool in zstd tar sha256sum sync gzip openssl awk find flock; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ! /usr/bin/time --version 2>&1 | grep -e GNU >/dev/null; then missing+=("GNU time (/usr/bin/time)"); fi
if (( ${#missing[@]} )); then
  say "error: missing: ${missing[*]} (Debian: apt-get install -y zstd time gzip openssl)"
  exit 1
fi
if (( cold )) && ! { : > /proc/sys/vm/drop_caches; } 2>/dev/null; then
  say "error: --cold needs to write /proc/sys/vm/drop_caches (root, not in a read-only /proc)"
  exit 1
fi

mkdir -p "$work"
work="$(cd "$work" && pwd)"
# One benchmark at a time per work directory: two would share its files and each other's CPUs.
exec 9> "$work/.lock"
if ! flock -n 9; then
  say "error: another packaging/bench.sh is running with the work directory $work"
  exit 1
fi
kubeferry="$repo/target/release/kubeferry"
stub="$repo/target/release/kubeferry-stub-amd64"
if (( build )); then
  say "building kubeferry (release) and the amd64 stub"
  (cd "$repo" && cargo build --quiet --release -p kubeferry-builder && packaging/build-stub.sh amd64 >/dev/null)
fi
for f in "$kubeferry" "$stub"; do
  [ -x "$f" ] || { say "error: $f is missing; run without --no-build"; exit 1; }
done
# Copies, so that a build in the work tree during the benchmark cannot change what is measured.
mkdir -p "$work/bin"
install -m 0755 "$kubeferry" "$work/bin/kubeferry"
install -m 0755 "$stub" "$work/bin/kubeferry-stub-amd64"
built_kf="$(date -u -r "$kubeferry" '+%Y-%m-%d %H:%M UTC')"
built_stub="$(date -u -r "$stub" '+%Y-%m-%d %H:%M UTC')"
kubeferry="$work/bin/kubeferry"
stub="$work/bin/kubeferry-stub-amd64"

# --- inputs ----------------------------------------------------------------------------------

if (( small_files )); then
  "$repo/packaging/bench/gen-small-files.sh" "$work" "$small_files" "$seed"
else
  "$repo/packaging/bench/gen-rootfs.sh" "$work" "$size_bytes" "$seed"
fi
rootfs="$work/rootfs"
sums="$work/rootfs.sha256"

keys="$work/keys"
if [ ! -s "$keys/bench.key" ] || [ ! -s "$keys/bench.pub" ]; then
  rm -rf "$keys"
  mkdir -m 0700 "$keys"
  "$kubeferry" keygen --out "$keys/bench" >/dev/null 2>&1
fi

rootfs_bytes="$(awk -F= '$1 == "bytes_total" {print $2}' "$work/rootfs.composition")"
need=$(( rootfs_bytes * 5 ))
avail=$(( $(df -Pk "$work" | awk 'NR == 2 {print $4}') * 1024 ))
if (( avail < need )); then
  say "error: $work has $((avail >> 20)) MiB free; the benchmark needs about $((need >> 20)) MiB"
  exit 1
fi

out_kf="$work/out/kubeferry"
out_base="$work/out/baseline"
x_kf="$work/x/kubeferry"
x_base="$work/x/baseline"
tdir="$work/timing"
bundle="$out_kf/bench-v1-linux-amd64.run"
tarball="$out_base/rootfs.tar.zst"
mkdir -p "$out_base" "$work/x" "$tdir"

# --- measuring -------------------------------------------------------------------------------

hz="$(getconf CLK_TCK)"
ncpu="$(nproc)"

# Busy CPU ticks of the whole machine so far (user nice system irq softirq steal).
cpu_busy() { awk '$1 == "cpu" {printf "%.0f\n", $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# CPU ticks used so far by kernel threads (writeback, reclaim, ...): work the kernel does for
# whichever process dirtied the pages, so it is not counted as other processes' load.
cpu_kthreads() {
  # Processes come and go between the glob and the read: cat's complaint is expected.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '
    { line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
      if (int(f[7] / 2097152) % 2 == 1) s += f[12] + f[13] }
    END { printf "%.0f\n", s }'
}
cpu_all() { awk '$1 == "cpu" {s = 0; for (i = 2; i <= NF; i++) s += $i; printf "%.0f\n", s; exit}' /proc/stat; }

# Percentage of the machine's CPUs busy over one second.
busy_pct() {
  local b0 a0 b1 a1
  b0=$(cpu_busy); a0=$(cpu_all)
  sleep 1
  b1=$(cpu_busy); a1=$(cpu_all)
  echo $(( (b1 - b0) * 100 / (a1 - a0 > 0 ? a1 - a0 : 1) ))
}

max_seen_busy=0
# Waits until the machine is idle; then, for step function FN, runs FN_prep (removes the
# step's previous output and, with a warm cache, reads its input so that it is in the page
# cache: this VM's kernel pages out page cache unused for about a minute, see the notes in
# docs/benchmarks.md), syncs, and drops the caches with --cold.
settle() {
  local waited=0 pct
  while :; do
    pct=$(busy_pct)
    if (( pct <= max_busy )); then break; fi
    if (( waited >= wait_max )); then
      say "error: the machine has been busy ($pct% of $ncpu CPUs) for ${wait_max}s; see top -bn1"
      exit 1
    fi
    say "  waiting: $pct% of the CPUs busy with other work ($(cut -d' ' -f1-3 /proc/loadavg))"
    sleep 10
    waited=$(( waited + 11 ))
  done
  (( pct > max_seen_busy )) && max_seen_busy=$pct
  if declare -F "$1_prep" >/dev/null; then "$1_prep"; fi
  sync
  if (( cold )); then echo 3 > /proc/sys/vm/drop_caches; fi
  return 0
}

# Reads files (or trees) so that they are in the page cache.
prime() {
  (( cold )) || find "$@" -type f -print0 | xargs -0 cat > /dev/null
}

# GNU time wrapper: T NAME CMD... writes "wall_s maxrss_kib cpu_s" to $tdir/NAME.
T() {
  local name=$1
  shift
  /usr/bin/time -f '%e %M %U %S' -o "$tdir/$name.raw" "$@"
}
# Reads NAME's measurement: sets W (wall s), M (max RSS KiB), C (user+sys s).
got() {
  read -r W M u s < <(tail -n 1 "$tdir/$1.raw")
  C=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.2f", u + s}')
}

results="$work/results.tsv"
printf 'round\tside\tstep\twall_s\tmax_rss_kib\tcpu_s\tforeign_cpu_s\tkernel_threads_cpu_s\n' > "$results.tmp"
disturbed=0

# step ROUND SIDE STEP FUNCTION [chained]: settles (unless chained to the step before it,
# which leaves the page cache and its dirty pages as that step left them), runs FUNCTION
# (which runs its processes under T and lists their names in PROCS), records wall time,
# each process's RSS and the CPU time that other processes used meanwhile.
step() {
  local round=$1 side=$2 name=$3 fn=$4 chained=${5:-} b0 b1 k0 k1 t0 t1 wall ours=0 foreign kernel p
  [ -n "$chained" ] || settle "$fn"
  PROCS=()
  k0=$(cpu_kthreads)
  b0=$(cpu_busy)
  t0=$EPOCHREALTIME
  "$fn"
  t1=$EPOCHREALTIME
  b1=$(cpu_busy)
  k1=$(cpu_kthreads)
  for p in "${PROCS[@]}"; do
    got "$p"
    ours=$(awk -v a="$ours" -v c="$C" 'BEGIN {print a + c}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t\n' "$round" "$side" "$name/$p" "$W" "$M" "$C" >> "$results.tmp"
  done
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  kernel=$(awk -v k="$(( k1 - k0 ))" -v hz="$hz" 'BEGIN {printf "%.2f", k / hz}')
  foreign=$(awk -v b="$(( b1 - b0 ))" -v hz="$hz" -v o="$ours" -v k="$kernel" 'BEGIN {f = b / hz - o - k; printf "%.2f", f < 0 ? 0 : f}')
  printf '%s\t%s\t%s\t%s\t\t%s\t%s\t%s\n' "$round" "$side" "$name" "$wall" "$ours" "$foreign" "$kernel" >> "$results.tmp"
  # Disturbed: other processes used more than 5% of the machine during the step (0.3 s are
  # allowed for the sampling itself and for short daemons).
  if [ "$round" != warmup ] \
     && awk -v f="$foreign" -v w="$wall" -v n="$ncpu" 'BEGIN {exit !(f > 0.3 + 0.05 * n * w)}'; then
    say "  $side $name: other processes used ${foreign}s of CPU during ${wall}s: round disturbed"
    disturbed=1
  fi
}

kf_build_prep() { rm -rf "$out_kf"; prime "$rootfs"; }
kf_build() {
  PROCS=(kubeferry-build)
  T kubeferry-build "$kubeferry" build "$rootfs" --name bench --version v1 --arch amd64 \
    --no-pull --allow-missing-images --key "$keys/bench.key" --stub "amd64=$stub" -o "$out_kf" --quiet >/dev/null
}
base_build_prep() { rm -f "$tarball"; prime "$rootfs"; }
base_build() {
  PROCS=(tar-c zstd-T0-3)
  T tar-c tar -cf - -C "$rootfs" . | T zstd-T0-3 zstd -q -T0 -3 -c > "$tarball"
}
base_fsync() {
  PROCS=(sync-file)
  T sync-file sync "$tarball"
}
kf_extract_prep() { rm -rf "$x_kf"; prime "$bundle"; }
kf_extract() {
  PROCS=(run-extract)
  T run-extract "$bundle" extract --to "$x_kf" --trusted-key "$keys/bench.pub" --quiet
}
base_unpack_prep() { rm -rf "$x_base"; mkdir -p "$x_base"; prime "$tarball"; }
base_unpack() {
  PROCS=(zstd-d tar-x)
  T zstd-d zstd -q -d -c "$tarball" | T tar-x tar -xf - -C "$x_base"
}
base_check() {
  PROCS=(sha256sum-c)
  (cd "$x_base" && T sha256sum-c sha256sum -c --quiet --strict "$sums")
}
base_syncfs() {
  PROCS=(sync-fs)
  T sync-fs sync -f "$x_base"
}

builds() {
  local round=$1 first=$2
  if [ "$first" = kubeferry ]; then
    step "$round" kubeferry build kf_build
    step "$round" baseline build base_build
    step "$round" baseline fsync base_fsync chained
  else
    step "$round" baseline build base_build
    step "$round" baseline fsync base_fsync chained
    step "$round" kubeferry build kf_build
  fi
}
extracts() {
  local round=$1 first=$2
  if [ "$first" = kubeferry ]; then
    step "$round" kubeferry extract kf_extract
    step "$round" baseline unpack base_unpack
    step "$round" baseline check base_check chained
    step "$round" baseline syncfs base_syncfs chained
  else
    step "$round" baseline unpack base_unpack
    step "$round" baseline check base_check chained
    step "$round" baseline syncfs base_syncfs chained
    step "$round" kubeferry extract kf_extract
  fi
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
say "measuring on $ncpu CPUs (load average $load_start), $runs rounds after a warm-up, page cache $( ((cold)) && echo cold || echo warm)"
round=0
tries=0
while (( round <= runs )); do
  if (( round % 2 )); then first=baseline; else first=kubeferry; fi
  label=$round
  (( round == 0 )) && label=warmup
  say "round $label ($first first)"
  disturbed=0
  builds "$label" "$first"
  extracts "$label" "$first"
  if (( round == 0 )); then
    # Both sides must have produced the same tree: check kubeferry's with the same list.
    (cd "$x_kf" && sha256sum -c --quiet --strict "$sums") \
      || { say "error: kubeferry's extracted tree differs from the rootfs"; exit 1; }
  fi
  if (( disturbed && round > 0 )); then
    tries=$(( tries + 1 ))
    if (( tries > retries_max )); then
      say "error: $retries_max rounds in a row were disturbed by other processes; try later"
      exit 1
    fi
    say "  running round $round again"
    sed -i "s/^$round\t/$round-disturbed\t/" "$results.tmp"
    continue
  fi
  tries=0
  round=$(( round + 1 ))
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
mv "$results.tmp" "$results"
rm -rf "$x_kf" "$x_base"

# --- report ----------------------------------------------------------------------------------

# Median over the measured rounds of a quantity: an awk expression over the fields
# (side/step names) of one round, e.g. 'v["baseline unpack"] + v["baseline check"]'.
# FIELD is 4 (wall) or 5 (RSS, KiB).
median() {
  awk -F'\t' -v field="$2" '
    NR > 1 && $1 ~ /^[0-9]+$/ { v[$1, $2 " " $3] = $field; rounds[$1] = 1 }
    END {
      n = 0
      for (r in rounds) { x[++n] = '"$(printf '%s' "$1" | sed 's/v\["\([^"]*\)"\]/v[r, "\1"]/g')"' }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
      m = (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
      printf "%.2f", m
    }' "$results"
}
all_values() {
  awk -F'\t' -v key="$1" 'NR > 1 && $1 ~ /^[0-9]+$/ && ($2 " " $3) == key { printf "%s%s", sep, $4; sep = " " }' "$results"
}
max_rss_mib() {
  # Largest RSS over every measured round (warm-up included) of the given steps, in MiB.
  awk -F'\t' -v keys="$1" '
    BEGIN { n = split(keys, k, ","); for (i = 1; i <= n; i++) want[k[i]] = 1 }
    NR > 1 && $5 != "" && (($2 " " $3) in want) && $5 > m { m = $5 }
    END { printf "%.1f", m / 1024 }' "$results"
}
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a < b)}'; }
verdict() { if "$@"; then echo MET; else echo MISSED; fi; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f%%", (a - b) * 100 / b}'; }

kf_build_s=$(median 'v["kubeferry build"]' 4)
base_build_s=$(median 'v["baseline build"]' 4)
base_build_sync_s=$(median 'v["baseline build"] + v["baseline fsync"]' 4)
base_fsync_s=$(median 'v["baseline fsync"]' 4)
kf_x_s=$(median 'v["kubeferry extract"]' 4)
base_unpack_s=$(median 'v["baseline unpack"]' 4)
base_check_s=$(median 'v["baseline check"]' 4)
base_syncfs_s=$(median 'v["baseline syncfs"]' 4)
base_x_s=$(median 'v["baseline unpack"] + v["baseline check"]' 4)
base_x_sync_s=$(median 'v["baseline unpack"] + v["baseline check"] + v["baseline syncfs"]' 4)
kf_size=$(stat -c %s "$bundle")
base_size=$(stat -c %s "$tarball")
stub_size=$(stat -c %s "$stub")
kf_build_rss=$(max_rss_mib "kubeferry build/kubeferry-build")
kf_x_rss=$(max_rss_mib "kubeferry extract/run-extract")
base_build_rss=$(max_rss_mib "baseline build/tar-c,baseline build/zstd-T0-3")
base_x_rss=$(max_rss_mib "baseline unpack/zstd-d,baseline unpack/tar-x,baseline check/sha256sum-c")
rss_of() { max_rss_mib "$1"; }

v_build=$(verdict le "$kf_build_s" "$base_build_s")
v_build_sync=$(verdict le "$kf_build_s" "$base_build_sync_s")
v_size=$(verdict le "$kf_size" "$(( base_size * 102 / 100 ))")
v_x=$(verdict lt "$kf_x_s" "$base_x_s")
v_x_sync=$(verdict lt "$kf_x_s" "$base_x_sync_s")
v_rss_build=$(verdict lt "$kf_build_rss" 64)
v_rss_x=$(verdict lt "$kf_x_rss" 64)

layout=""
if command -v jq >/dev/null; then
  layout="$("$kubeferry" inspect --json "$bundle" | jq -r '
    "stub \(.trailer.stub[1]) B, payload \(.trailer.payload[1]) B in \(.manifest.payload.chunks | length) chunks (\([.manifest.payload.chunks[] | select(.codec == "zstd")] | length) zstd, \([.manifest.payload.chunks[] | select(.codec == "stored")] | length) stored), index \(.trailer.index[1]) B, manifest \(.trailer.manifest[1]) B, \(.manifest.index.entries) entries"')"
fi
composition="$(tr '\n' ' ' < "$work/rootfs.composition")"
machine="$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(df -PhT "$work" | awk 'NR == 2 {print $2 " on " $1}'), Linux $(uname -r)"
versions="$(zstd --version | grep -o 'v[0-9.]*' | sed -n 1p), $(tar --version | sed -n 1p), $(sha256sum --version | sed -n 1p), GNU time $(dpkg-query -W -f='${Version}' time 2>/dev/null || /usr/bin/time --version 2>&1 | sed -n 1p)"
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')"

{
  echo "kubeferry benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command:   packaging/bench.sh --size-gib $size_gib --runs $runs --seed $seed$( ((cold)) && echo ' --cold')"
  echo "machine:   $machine"
  echo "tools:     $versions"
  echo "kubeferry: $commit; kubeferry built $built_kf, stub $stub_size bytes built $built_stub"
  echo "rootfs:    $composition"
  echo "generated: $(tr '\n' ' ' < "$work/rootfs.params")"
  [ -n "$layout" ] && echo "bundle:    $layout"
  echo "load:      $load_start at start, $load_end at end; at most $max_seen_busy% of the CPUs busy before a timed command"
  echo "cache:     $( ((cold)) && echo 'dropped before every timed command' || echo 'warm (warm-up round first; everything fits in RAM)')"
  echo
  printf '%-34s %16s %16s %10s\n' "median of $runs rounds" kubeferry baseline kf-vs-base
  printf '%-34s %16s %16s %10s\n' "build, s (pipeline)" "$kf_build_s" "$base_build_s" "$(pct "$kf_build_s" "$base_build_s")"
  printf '%-34s %16s %16s %10s\n' "build, s (pipeline + fsync)" "$kf_build_s" "$base_build_sync_s" "$(pct "$kf_build_s" "$base_build_sync_s")"
  printf '%-34s %16s %16s %10s\n' "size, bytes" "$kf_size" "$base_size" "$(pct "$kf_size" "$base_size")"
  printf '%-34s %16s %16s %10s\n' "verify+extract, s" "$kf_x_s" "$base_x_s" "$(pct "$kf_x_s" "$base_x_s")"
  printf '%-34s %16s %16s %10s\n' "verify+extract, s (+ syncfs)" "$kf_x_s" "$base_x_sync_s" "$(pct "$kf_x_s" "$base_x_sync_s")"
  printf '%-34s %16s %16s\n' "peak RSS build, MiB" "$kf_build_rss" "$base_build_rss"
  printf '%-34s %16s %16s\n' "peak RSS verify+extract, MiB" "$kf_x_rss" "$base_x_rss"
  echo
  echo "baseline steps (medians, s): tar|zstd $base_build_s, sync FILE $base_fsync_s; zstd -d|tar -x $base_unpack_s, sha256sum -c $base_check_s, sync -f $base_syncfs_s"
  echo "baseline peak RSS (MiB): tar -c $(rss_of 'baseline build/tar-c'), zstd -T0 -3 $(rss_of 'baseline build/zstd-T0-3'), zstd -d $(rss_of 'baseline unpack/zstd-d'), tar -x $(rss_of 'baseline unpack/tar-x'), sha256sum -c $(rss_of 'baseline check/sha256sum-c')"
  echo "every round (s): kubeferry build $(all_values 'kubeferry build'); baseline build $(all_values 'baseline build'); kubeferry extract $(all_values 'kubeferry extract'); baseline unpack $(all_values 'baseline unpack'), check $(all_values 'baseline check')"
  echo
  echo "targets:"
  echo "  build no slower than the pipeline:            $v_build (vs the pipeline), $v_build_sync (vs the pipeline + fsync)"
  echo "  size within 2% of the pipeline's output:      $v_size ($(pct "$kf_size" "$base_size"))"
  echo "  verify+extract faster than the pipeline:      $v_x (vs zstd -d|tar -x; sha256sum -c), $v_x_sync (+ syncfs)"
  echo "  peak RSS under 64 MiB:                        build $v_rss_build ($kf_build_rss MiB), extract $v_rss_x ($kf_x_rss MiB)"
} | tee "$work/results.txt"

{
  echo "| median of $runs rounds | kubeferry | baseline | kubeferry vs baseline | target |"
  echo "| --- | ---: | ---: | ---: | --- |"
  echo "| build, s | $kf_build_s | $base_build_s (\`tar \| zstd\`) | $(pct "$kf_build_s" "$base_build_s") | $v_build |"
  echo "| build, s, baseline + \`sync FILE\` | $kf_build_s | $base_build_sync_s | $(pct "$kf_build_s" "$base_build_sync_s") | $v_build_sync |"
  echo "| size, bytes | $kf_size | $base_size | $(pct "$kf_size" "$base_size") | $v_size |"
  echo "| verify+extract, s | $kf_x_s | $base_x_s (unpack $base_unpack_s + \`sha256sum -c\` $base_check_s) | $(pct "$kf_x_s" "$base_x_s") | $v_x |"
  echo "| verify+extract, s, baseline + \`sync -f\` | $kf_x_s | $base_x_sync_s | $(pct "$kf_x_s" "$base_x_sync_s") | $v_x_sync |"
  echo "| peak RSS build, MiB | $kf_build_rss | $base_build_rss (largest process) | | $v_rss_build |"
  echo "| peak RSS verify+extract, MiB | $kf_x_rss | $base_x_rss (largest process) | | $v_rss_x |"
} > "$work/results.md"
say "results in $work/results.txt, results.md and results.tsv"
