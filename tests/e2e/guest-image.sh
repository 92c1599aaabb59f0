#!/usr/bin/env bash
# Builds the air-gapped VM's guest: a minimal Debian 12 root filesystem as a raw ext4 image (no
# partition table, no boot loader) plus the kernel and initrd taken out of it for direct kernel
# boot. Cached: the image is rebuilt only when this script or the guest files under guest/
# change (a hash of them is kept beside the image).
#
#   tests/e2e/guest-image.sh [DIR]     DIR: default $KUBEFERRY_VM_DIR or /var/tmp/kubeferry-vm
#
# Writes DIR/guest/{root.img,vmlinuz,initrd.img,inputs.sha256}. Needs root, debootstrap and
# e2fsprogs; uses the host's configured Debian mirror. $KUBEFERRY_VM_GUEST_EXTRA adds packages
# (comma-separated), e.g. libdevmapper1.02.1, which Debian's dockerd is linked against.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-${KUBEFERRY_VM_DIR:-/var/tmp/kubeferry-vm}}"
out="$dir/guest"
mirror="${KUBEFERRY_VM_MIRROR:-http://deb.debian.org/debian}"
packages=systemd,systemd-sysv,udev,kmod,iptables,ebtables,ethtool,socat,conntrack,mount,iproute2,e2fsprogs,procps,linux-image-amd64
packages="$packages${KUBEFERRY_VM_GUEST_EXTRA:+,$KUBEFERRY_VM_GUEST_EXTRA}"

inputs="$( (cat "$0" "$here/guest/kubeferry-test.service"; echo "$mirror $packages") | sha256sum | cut -d' ' -f1)"
if [ -f "$out/inputs.sha256" ] && [ "$(cat "$out/inputs.sha256")" = "$inputs" ] &&
   [ -f "$out/root.img" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  echo "guest-image: $out is up to date" >&2
  exit 0
fi

command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed" >&2; echo "hint: apt-get install debootstrap" >&2; exit 1; }
start=$(date +%s)
mkdir -p "$out"
rm -f "$out/inputs.sha256"
tree="$out/tree"
rm -rf "$tree"
echo "guest-image: debootstrap bookworm ($packages) into $tree" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$tree" "$mirror" >"$out/debootstrap.log" 2>&1 ||
  { tail -20 "$out/debootstrap.log" >&2; echo "error: debootstrap failed (log: $out/debootstrap.log)" >&2; exit 1; }

# Root logs in on the serial console without a password; the host name is fixed.
chroot "$tree" passwd -d root >/dev/null
echo kubeferry-vm >"$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kubeferry-vm\n' >"$tree/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$tree/etc/fstab"
mkdir -p "$tree/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$tree/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 %I $TERM
UNIT
# The test disk (/dev/vdb) is mounted at /test and its /test/run.sh run once; the VM powers off
# when it ends, whatever its result.
mkdir -p "$tree/test"
install -m 0644 "$here/guest/kubeferry-test.service" "$tree/etc/systemd/system/kubeferry-test.service"
ln -sf /etc/systemd/system/kubeferry-test.service "$tree/etc/systemd/system/multi-user.target.wants/kubeferry-test.service"
# Nothing in the guest may try the network: no apt timers, no time sync.
rm -f "$tree/etc/systemd/system/timers.target.wants/"apt-daily*.timer
chroot "$tree" apt-get clean

cp "$(readlink -f "$tree/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$tree/initrd.img")" "$out/initrd.img"
chmod 0644 "$out/vmlinuz" "$out/initrd.img"
used_mib=$(du -sm "$tree" | cut -f1)
size_mib=$(( used_mib + 6144 ))   # room for the bundle's rootfs, containerd's images, etcd
rm -f "$out/root.img"
mkfs.ext4 -q -F -L kubeferry-root -d "$tree" "$out/root.img" "${size_mib}M"
rm -rf "$tree"
echo "$inputs" >"$out/inputs.sha256"
echo "guest-image: built $out/root.img (${used_mib} MiB used of ${size_mib} MiB) in $(( $(date +%s) - start )) s" >&2
echo "$(( $(date +%s) - start ))" >"$out/build-seconds"
