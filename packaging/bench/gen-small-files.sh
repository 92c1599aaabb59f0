#!/usr/bin/env bash
# Generates a rootfs of many small files, the case where a per-entry cost shows: FILES files
# of 200 bytes of seeded text, 500 to a directory, under manifests/.
#
#   packaging/bench/gen-small-files.sh WORK FILES SEED
#
# Writes WORK/rootfs, WORK/rootfs.sha256, WORK/rootfs.composition and WORK/rootfs.params as
# gen-rootfs.sh does, and reuses them while FILES and SEED are the same. Needs python3.
set -euo pipefail
export LC_ALL=C

GENERATOR_VERSION=1
if [ $# -ne 3 ]; then
  echo "usage: $0 WORK FILES SEED" >&2
  exit 2
fi
work="$1"
files="$2"
seed="$3"
case "$files$seed" in
  *[!0-9]*) echo "error: FILES and SEED must be integers" >&2; exit 2 ;;
esac
command -v python3 >/dev/null || { echo "error: 'python3' is needed" >&2; exit 1; }
mkdir -p "$work"
work="$(cd "$work" && pwd)"
params="generator=small-files-$GENERATOR_VERSION files=$files seed=$seed"
if [ -f "$work/rootfs.params" ] && [ "$(head -1 "$work/rootfs.params")" = "$params" ] \
  && [ -d "$work/rootfs" ] && [ -f "$work/rootfs.sha256" ]; then
  echo "reusing $work/rootfs ($params)" >&2
  exit 0
fi
echo "generating $work/rootfs ($params)" >&2
rm -rf "$work/rootfs" "$work/rootfs.tmp" "$work/rootfs.sha256" "$work/rootfs.params" "$work/rootfs.composition"
python3 - "$work/rootfs.tmp" "$files" "$seed" <<'PY'
import os, random, sys
root, files, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(2000)]
for n in range(files):
    d = os.path.join(root, "manifests", f"d{n // 500:04}")
    if n % 500 == 0:
        os.makedirs(d)
    text = " ".join(rng.choice(words) for _ in range(40))[:200].ljust(200, "x")
    with open(os.path.join(d, f"f{n % 500:03}.yaml"), "w") as f:
        f.write(text)
PY
root="$work/rootfs.tmp"
find "$root" -type d -exec chmod 0755 {} +
(cd "$root" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/rootfs.sha256.tmp"
{
  echo "files=$files dirs=$(find "$root" -type d | wc -l) symlinks=0"
  echo "bytes_total=$(( files * 200 ))"
  echo "bytes_compressed=0"
  echo "bytes_executables=0"
  echo "bytes_text_and_other=$(( files * 200 ))"
} > "$work/rootfs.composition"
mv "$work/rootfs.sha256.tmp" "$work/rootfs.sha256"
mv "$root" "$work/rootfs"
printf '%s\n' "$params" > "$work/rootfs.params"
cat "$work/rootfs.composition" >&2
