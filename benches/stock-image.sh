#!/usr/bin/env bash
# The baseline for benches/boot.rs: a stock Debian as a user would make one by hand —
# systemd as init, the distribution kernel with its initramfs, DHCP networking, OpenSSH with
# host keys generated at install time. Usage: stock-image.sh MIRROR OUTDIR PUBKEY_FILE
set -euo pipefail
MIRROR=$1 OUT=$2 PUBKEY=$3
WORK=$(mktemp -d "$OUT.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mmdebstrap --mode=root --variant=minbase --arch=amd64 \
  --include=systemd-sysv,linux-image-amd64,openssh-server,udev,ifupdown,isc-dhcp-client,iproute2 \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='chroot "$1" systemctl enable ssh' \
  --customize-hook='printf "auto lo\niface lo inet loopback\nallow-hotplug ens3 eth0 enp0s2\niface ens3 inet dhcp\niface eth0 inet dhcp\niface enp0s2 inet dhcp\n" > "$1/etc/network/interfaces"' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook="mkdir -p -m 700 \"\$1/root/.ssh\" && cp $PUBKEY \"\$1/root/.ssh/authorized_keys\"" \
  bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 || { tail -30 "$WORK/mmdebstrap.log" >&2; exit 1; }
mkdir -p "$OUT"
cp "$(ls "$WORK"/rootfs/boot/vmlinuz-* | tail -n1)" "$OUT/vmlinuz"
cp "$(ls "$WORK"/rootfs/boot/initrd.img-* | tail -n1)" "$OUT/initrd.img"
mkfs.ext4 -q -F -d "$WORK/rootfs" "$WORK/root.raw" 4G
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/base.qcow2"
