#!/usr/bin/env bash
# A Debian cloud image as the EC2 AMIs are: systemd, the distribution kernel, DHCP, OpenSSH,
# and cloud-init reading a NoCloud seed (no other datasource, so nothing waits on a metadata
# service). No SSH host keys and no authorized keys: the user data must supply both.
# Usage: cloud-image.sh MIRROR OUTDIR
set -euo pipefail
MIRROR=$1 OUT=$2
WORK=$(mktemp -d "$OUT.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mmdebstrap --mode=root --variant=minbase --arch=amd64 \
  --include=systemd-sysv,linux-image-amd64,openssh-server,udev,ifupdown,isc-dhcp-client,iproute2,cloud-init \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='chroot "$1" systemctl enable ssh' \
  --customize-hook='printf "auto lo\niface lo inet loopback\nallow-hotplug ens3\niface ens3 inet dhcp\n" > "$1/etc/network/interfaces"' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook='printf "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n" > "$1/etc/cloud/cloud.cfg.d/99-runner-test.cfg"' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 || { tail -30 "$WORK/mmdebstrap.log" >&2; exit 1; }
mkdir -p "$WORK/out"
cp "$(ls "$WORK"/rootfs/boot/vmlinuz-* | tail -n1)" "$WORK/out/vmlinuz"
cp "$(ls "$WORK"/rootfs/boot/initrd.img-* | tail -n1)" "$WORK/out/initrd.img"
mkfs.ext4 -q -F -d "$WORK/rootfs" "$WORK/root.raw" 4G
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$WORK/out/base.qcow2"
mv "$WORK/out" "$OUT"
