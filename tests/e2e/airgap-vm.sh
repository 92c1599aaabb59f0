#!/usr/bin/env bash
# The air-gapped VM test: a bare Debian 12 guest with NO network device becomes a Ready
# Kubernetes node from one .run file and its trusted public key.
#
#   tests/e2e/airgap-vm.sh [BUNDLE.run PUBKEY]
#
# Without arguments it builds kubeferry and the amd64 stub, makes a key pair in the work dir and
# builds k8s-v1.20.2-linux-amd64.run from $KUBEFERRY_ROOTFS (default
# /work/k8s-example/rootfs-amd64, made by packaging/example-rootfs/build.sh).
#
# 1. tests/e2e/guest-image.sh: the guest's root image, kernel and initrd (cached in the work dir)
# 2. a test disk (ext4, mkfs.ext4 -d) with the bundle, the key, guest/run.sh and its parameters
# 3. qemu-system-x86_64: 2 vCPUs, 4 GiB, -nic none, direct kernel boot, the root disk a qcow2
#    overlay of the cached image (which stays pristine); KVM when it can boot the guest, else
#    TCG; serial console to a log; a timeout
# 4. the guest runs /test/run.sh (kubeferry-test.service) and powers off: hard, in the middle of
#    the install, at each power-off point, after which the host boots it again on the same root
#    disk; after the last boot the results are read back with debugfs -R rdump and summarised;
#    exit 1 with the log tails when a check failed
#
# Environment: KUBEFERRY_VM_DIR (work dir, default /var/tmp/kubeferry-vm), KUBEFERRY_VM_ACCEL
# (kvm, tcg or auto: the default, KVM only when /dev/kvm boots the guest), KUBEFERRY_VM_TIMEOUT
# (seconds for the whole VM run, default 2400), KUBEFERRY_VM_READY_DEADLINE (seconds after the
# install for a Ready node, default 900), KUBEFERRY_VM_INSTALL_TIMEOUT (seconds the install may
# take before it is stopped and the logs collected, default 1500), KUBEFERRY_VM_ADVERTISE (the
# dummy interface's address, default 10.0.2.15), KUBEFERRY_VM_POWEROFF_AT (where the VM is
# powered off hard during the install, "STEP+SECONDS ...", default "extract+3 kubeadm-init+60";
# empty: none). Needs root, qemu-system-x86, debootstrap and e2fsprogs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${KUBEFERRY_VM_DIR:-/var/tmp/kubeferry-vm}"
accel="${KUBEFERRY_VM_ACCEL:-auto}"
timeout_s="${KUBEFERRY_VM_TIMEOUT:-2400}"
ready_deadline="${KUBEFERRY_VM_READY_DEADLINE:-900}"
advertise="${KUBEFERRY_VM_ADVERTISE:-10.0.2.15}"
install_timeout="${KUBEFERRY_VM_INSTALL_TIMEOUT:-1500}"
poweroff_at="${KUBEFERRY_VM_POWEROFF_AT-extract+3 kubeadm-init+60}"
rootfs="${KUBEFERRY_ROOTFS:-/work/k8s-example/rootfs-amd64}"
mkdir -p "$dir"
log() { echo "airgap-vm: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
for t in qemu-system-x86_64 mkfs.ext4 debugfs debootstrap; do
  command -v "$t" >/dev/null || die "'$t' is not installed (apt-get install qemu-system-x86 e2fsprogs debootstrap; see docs/airgap-vm.md for qemu-utils)"
done

# 0. The bundle and its key.
if [ $# -ge 2 ]; then
  bundle="$(readlink -f "$1")"; pubkey="$(readlink -f "$2")"
else
  log "building kubeferry, the amd64 stub and the bundle of $rootfs"
  (cd "$repo" && cargo build --quiet --release -p kubeferry-builder && packaging/build-stub.sh amd64 >/dev/null)
  [ -f "$dir/release.key" ] || "$repo/target/release/kubeferry" keygen --out "$dir/release" >&2
  rm -rf "$dir/dist"
  # The example image carries every image its cluster runs but CoreDNS, which Debian does not
  # package (the install skips that addon): nothing is pulled, the build warns of CoreDNS.
  "$repo/target/release/kubeferry" build -f "$rootfs/Kubefile" "$rootfs" --name k8s --version v1.20.2 \
    --no-pull --allow-missing-images --key "$dir/release.key" -o "$dir/dist" >&2
  bundle="$(ls "$dir"/dist/*-linux-amd64.run)"; pubkey="$dir/release.pub"
fi
[ -f "$bundle" ] && [ -f "$pubkey" ] || die "no bundle '$bundle' or key '$pubkey'"

# 1. The guest.
t0=$(date +%s)
"$here/guest-image.sh" "$dir"
image_s=$(( $(date +%s) - t0 ))
g="$dir/guest"

# 2. The test disk: the bundle, the key, the script, its parameters. Nothing else of ours.
run="$dir/run"
rm -rf "$run"; mkdir -p "$run/disk"
cp "$bundle" "$pubkey" "$run/disk/"
[ "$(basename "$pubkey")" = release.pub ] || mv "$run/disk/$(basename "$pubkey")" "$run/disk/release.pub"
install -m 0755 "$here/guest/run.sh" "$run/disk/run.sh"
cat >"$run/disk/params.env" <<ENV
BUNDLE=$(basename "$bundle")
ADVERTISE=$advertise
READY_DEADLINE=$ready_deadline
POD_DEADLINE=600
INSTALL_TIMEOUT=$install_timeout
POWEROFF_AT="$poweroff_at"
REGISTRY_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
ENV
disk_mib=$(( $(du -sm "$run/disk" | cut -f1) + 512 ))
mkfs.ext4 -q -F -L kubeferry-test -d "$run/disk" "$run/test.img" "${disk_mib}M"
rm -rf "$run/disk"

# 3. Boot. KVM here may be a nested hypervisor that cannot run a stock kernel: in auto mode the
#    guest is booted under KVM for a short probe first and TCG is used if it does not get to
#    userspace. The root disk is a qcow2 overlay of the cached image: it keeps what the guest
#    wrote from one boot to the next, and the image stays pristine.
qemu-img create -q -f qcow2 -F raw -b "$g/root.img" "$run/root.qcow2"
qemu_base=(qemu-system-x86_64 -machine q35 -m 4096 -smp 2 -nic none -nographic -no-reboot
  -kernel "$g/vmlinuz" -initrd "$g/initrd.img")
root_rw=(-drive "file=$run/root.qcow2,format=qcow2,if=virtio")
append="root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1"
if [ "$accel" = auto ]; then
  accel=tcg
  if [ -w /dev/kvm ]; then
    log "probing KVM (60 s)"
    # (in a subshell whose stderr is dropped: qemu aborting is the expected outcome here)
    ( timeout 60 "${qemu_base[@]}" -drive "file=$g/root.img,format=raw,if=virtio,snapshot=on" \
      -accel kvm -cpu host -append "$append systemd.unit=rescue.target" \
      -serial "file:$run/kvm-probe.log" -monitor none || true ) >/dev/null 2>&1
    grep -q -E 'Reached target|rescue' "$run/kvm-probe.log" 2>/dev/null && accel=kvm
  fi
fi
case "$accel" in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) die "KUBEFERRY_VM_ACCEL must be kvm, tcg or auto, not '$accel'" ;;
esac
read -r -a points <<<"$poweroff_at"
boots=$(( ${#points[@]} + 1 ))
t1=$(date +%s)
qrc=0
for boot in $(seq 1 "$boots"); do
  left=$(( timeout_s - ($(date +%s) - t1) ))
  [ "$left" -gt 60 ] || { log "no time left for boot $boot"; qrc=124; break; }
  log "boot $boot of $boots under $accel (2 vCPUs, 4 GiB, no network device; console: $run/console-$boot.log; at most ${left}s)"
  set +e
  timeout --foreground -k 10 "$left" "${qemu_base[@]}" "${accel_args[@]}" -append "$append" "${root_rw[@]}" \
    -drive "file=$run/test.img,format=raw,if=virtio" \
    -serial "file:$run/console-$boot.log" -monitor none >"$run/qemu-$boot.log" 2>&1
  qrc=$?
  set -e
  [ $qrc = 124 ] && { log "the VM did not power off in time: killed"; break; }
  # The guest counts its boots on the test disk; it stops early when a check failed.
  done_boots=$(debugfs -R 'cat /boots' "$run/test.img" 2>/dev/null | tr -dc 0-9)
  [ "${done_boots:-0}" = "$boot" ] || { log "boot $boot did not run the test (it counted ${done_boots:-none})"; break; }
  debugfs -R 'cat /results/failed' "$run/test.img" 2>/dev/null | grep -x 1 >/dev/null && break
done
vm_s=$(( $(date +%s) - t1 ))
cat "$run"/console-*.log >"$run/console.log" 2>/dev/null || true

# 4. Results.
rm -rf "$run/out"; mkdir -p "$run/out"
debugfs -R "rdump /results $run/out" "$run/test.img" >/dev/null 2>&1 || true
res="$run/out/results"
echo
echo "== air-gapped VM test ($accel; bundle $(basename "$bundle"), $(( $(stat -c %s "$bundle") / 1048576 )) MiB)"
echo "guest image: ${image_s}s (built in $(cat "$g/build-seconds" 2>/dev/null || echo '?')s when last built); VM run: ${vm_s}s, ${boot} boot(s) (power-offs at: ${poweroff_at:-none}), last qemu exit $qrc"
echo "guest root disk written: $(( $(qemu-img info --output=json "$run/root.qcow2" | sed -n 's/.*"actual-size": \([0-9]*\).*/\1/p' | sed -n 1p) / 1048576 )) MiB (overlay)"
if [ ! -d "$res" ]; then
  echo "no results on the test disk: the test unit did not run. Console tail:"
  tail -40 "$run/console.log"
  exit 1
fi
if [ -f "$res/timings" ]; then
  echo "timings (seconds since the guest's kernel started):"
  awk '{printf "  %-18s %8.1f\n", $1, $2}' "$res/timings"
fi
if [ -f "$res/install.out" ]; then
  echo "install progress (seconds since boot, line):"
  grep -v '^\S* *$' "$res/install.out" | sed -n '1,40s/^/  /p'
fi
echo "checks:"
sed 's/^/  /' "$res/checks" 2>/dev/null || echo "  (none recorded)"
echo "results: $res"
if [ "$(cat "$res/failed" 2>/dev/null)" != 0 ]; then
  echo
  echo "== FAILED. Tails:"
  for f in install.out install.log journal-kubelet.txt left-after-purge.txt run.log; do
    [ -f "$res/$f" ] && { echo "--- $f"; tail -25 "$res/$f"; }
  done
  exit 1
fi
echo "== passed"
