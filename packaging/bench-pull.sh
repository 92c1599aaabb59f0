#!/usr/bin/env bash
# Pull benchmark: kubeferry pull against skopeo copy, from Debian's docker-registry on 127.0.0.1.
#
#   packaging/bench-pull.sh [--images N] [--base-mib M] [--own-mib M] [--work DIR]
#
# Generates N two-platform images (packaging/bench/gen-images.py: a base layer shared by all
# images of a platform, and a layer of each image's own), pushes them with skopeo, then times:
#   cold      kubeferry pull of every image for amd64 into a new output, empty cache
#   warm      the same again into another output, the cache kept
#   arm64     kubeferry pull for arm64 with that cache (the amd64 blobs are of no use to it)
#   skopeo    skopeo copy of each image's amd64 manifest into one oci: layout, one by one
#             (bytes: the size of the layout)
#   build     kubeferry build --unsigned of a rootfs whose manifests/imageList names every
#             image (registry/ empty), with a cache of its own: once cold, then the rebuild
#             (the cache hit rate is the share of blobs and manifests taken from the cache)
# and prints each one's seconds, bytes fetched and cache hits. Needs python3, skopeo and
# docker-registry (apt-get install -y skopeo docker-registry).
set -euo pipefail
export LC_ALL=C
repo="$(cd "$(dirname "$0")/.." && pwd)"
images=4 base_mib=32 own_mib=8 work=/tmp/kubeferry-bench-pull
while [ $# -gt 0 ]; do
    case "$1" in
        --images) images="$2"; shift 2 ;;
        --base-mib) base_mib="$2"; shift 2 ;;
        --own-mib) own_mib="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        *) echo "usage: $0 [--images N] [--base-mib M] [--own-mib M] [--work DIR]" >&2; exit 2 ;;
    esac
done
rm -rf "$work"
mkdir -p "$work"
cargo build --quiet --release -p kubeferry-builder --bin kubeferry --manifest-path "$repo/Cargo.toml"
"$repo/packaging/build-stub.sh" amd64 >/dev/null
stub="$repo/target/stubs/kubeferry-stub-amd64"
kubeferry="$repo/target/release/kubeferry"
python3 "$repo/packaging/bench/gen-images.py" "$work/layout" "$images" "$base_mib" "$own_mib"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$work/policy.json"
skopeo_() { skopeo --policy "$work/policy.json" "$@"; }
refs=()
for i in $(seq 0 $((images - 1))); do
    skopeo_ copy --quiet --all --dest-tls-verify=false "oci:$work/layout:img$i" "docker://127.0.0.1:$port/bench/img$i:v1"
    refs+=("127.0.0.1:$port/bench/img$i:v1")
done

now() { date +%s.%N; }
run_pull() { # NAME ARCH OUT
    local start end
    start=$(now)
    DOCKER_CONFIG="$work/none" "$kubeferry" pull --quiet --json --arch "$2" --cache-dir "$work/cache" \
        --out "$work/$3" "${refs[@]}" >"$work/$1.json"
    end=$(now)
    python3 - "$1" "$start" "$end" "$work/$1.json" <<'PY'
import json, sys
name, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = json.load(open(path))["counters"]
print(f"| kubeferry pull, {name} | {end - start:.2f} | {c['bytes_fetched'] / 2**20:.1f} MiB | "
      f"{c['blobs_fetched']} | {c['cache_hits']} |")
PY
}
echo "| run | seconds | fetched | blobs fetched | cache hits |"
echo "|---|---:|---:|---:|---:|"
run_pull cold amd64 out-cold
run_pull warm amd64 out-warm
run_pull arm64 arm64 out-arm64
start=$(now)
for i in $(seq 0 $((images - 1))); do
    skopeo_ copy --quiet --override-arch amd64 --src-tls-verify=false \
        "docker://127.0.0.1:$port/bench/img$i:v1" "oci:$work/skopeo:img$i"
done
end=$(now)
bytes=$(du -sb "$work/skopeo" | cut -f1)
echo "| skopeo copy (one by one, into one oci: layout) | $(python3 -c "print(f'{$end - $start:.2f}')") | $(python3 -c "print(f'{$bytes / 2**20:.1f} MiB')") | | |"

mkdir -p "$work/rootfs/manifests"
printf '%s\n' "${refs[@]}" >"$work/rootfs/manifests/imageList"
run_build() { # NAME OUT
    local start end
    start=$(now)
    DOCKER_CONFIG="$work/none" "$kubeferry" build "$work/rootfs" --name bench --version v1 --arch amd64 \
        --unsigned --stub "amd64=$stub" --cache-dir "$work/cache-build" -o "$work/$2" 2>"$work/$1.log" >/dev/null
    end=$(now)
    python3 - "$1" "$start" "$end" "$work/$1.log" <<'PY'
import re, sys
name, start, end, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), open(sys.argv[4]).read()
m = re.search(r"^images: (\d+) blobs and (\d+) manifests fetched \(([^)]*)\), (\d+) from the cache$", log, re.M)
blobs, manifests, fetched, hits = int(m[1]), int(m[2]), m[3], int(m[4])
rate = hits / (blobs + manifests + hits) if blobs + manifests + hits else 0
print(f"| kubeferry build, {name} | {end - start:.2f} | {fetched} | {blobs} | {hits} ({rate:.0%} of requests) |")
PY
}
run_build build-cold dist-cold
run_build rebuild dist-rebuild
