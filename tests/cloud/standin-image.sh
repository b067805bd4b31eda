#!/usr/bin/env bash
# A stand-in for a downloaded distribution cloud image (such as Debian's genericcloud qcow2),
# made to boot the way one does: UEFI firmware finds the bootloader inside the disk, and the
# bootloader starts the kernel. Nothing outside the disk is needed (no QEMU -kernel/-initrd).
#
#   disk.qcow2  GPT, 2 GiB: p1 = EFI system partition (FAT32: systemd-boot, kernel, initrd),
#               p2 = ext4 root (Debian bookworm: systemd, cloud-init reading a NoCloud seed).
#
# As on the real images, the root partition is grown to fill the disk at first boot
# (cloud-init's growpart and resize_rootfs), the network comes up by DHCP on whatever the NIC
# is called (cloud-init's fallback network config, rendered for ifupdown), and there are no
# SSH host keys nor authorized keys: the user data must supply them.
#
# The disk is assembled without mounting anything and without loop devices (so it works in
# a container, and nothing is left mounted if it fails): each partition is made as a file,
# the root filesystem straight from mmdebstrap's directory tree, then copied into a sparse
# disk image. 2 GiB, as Debian's genericcloud images are.
# Usage: standin-image.sh MIRROR OUTDIR     (host tools: mmdebstrap, fdisk, mtools, e2fsprogs,
#                                            qemu-utils)
set -euo pipefail
MIRROR=$1 OUT=$2
WORK=$(mktemp -d "$OUT.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Fixed identifiers, so the kernel command line and fstab can name the root partition before
# the disk exists, and two bakes of one script give the same layout.
DISK_GUID=8a3c1f52-6d0e-4b9a-9f43-2c5e7b1d0a61
ESP_PARTUUID=6e0b3d1a-93f4-4c27-b5e8-0d4a2f7c1b93
ROOT_PARTUUID=4f68bce3-e8cd-4db1-96e7-fbcaf984b709
ROOT_FS_UUID=2d9a4b7e-51c3-4f0a-8e6d-93b1c7a5e402

# Layout in 512-byte sectors: 1 MiB before the ESP (GPT + alignment), a 64 MiB ESP, the root
# partition up to 1 MiB before the end (room for the backup GPT).
MIB=2048
DISK_MIB=2048
ESP_START=$MIB ESP_SIZE=$((64 * MIB))
ROOT_START=$((ESP_START + ESP_SIZE))
ROOT_SIZE=$((DISK_MIB * MIB - ROOT_START - MIB))

# The root filesystem, as Debian's cloud images have it: systemd, cloud-init, OpenSSH, DHCP
# through ifupdown; plus sudo (cloud-init's users get sudo rules), cloud-guest-utils (growpart;
# fdisk gives it sfdisk, which it needs for GPT), e2fsprogs (resize2fs), and systemd-boot-efi
# (only for the bootloader binary copied to the ESP). linux-image-cloud-amd64 is the kernel
# the cloud images use: virtio drivers and vfat (the seed) included, a fraction of the
# generic kernel's modules, so a smaller initrd and a quicker boot.
packages=systemd-sysv,linux-image-cloud-amd64,udev,openssh-server,iproute2,ifupdown,isc-dhcp-client
packages+=,cloud-init,sudo,cloud-guest-utils,fdisk,e2fsprogs,systemd-boot-efi
# The C toolchain is baked in, as a CI team's own base image would have it: installing it in
# the customising boot under TCG costs minutes of every cold test run. What the tests still
# install there (`packages = ["make"]`) is small.
packages+=,gcc,libc6-dev
options=(
  --mode=root --variant=minbase --arch=amd64 --include="$packages"
  --aptopt='APT::Install-Recommends "false"'
  # Man pages, docs and translations are left out (also of what the guest installs later):
  # the image is a test fixture, and smaller is quicker to bake and to copy.
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --customize-hook='chroot "$1" systemctl enable ssh'
  # ifupdown reads what cloud-init renders into interfaces.d: its fallback config, DHCP on the
  # first NIC matched by MAC whatever the NIC is called. Nothing here names an interface.
  --customize-hook='printf "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n" > "$1/etc/network/interfaces"'
  # Root by PARTUUID, as the bootloader entry names it. The ESP is not mounted: nothing in the
  # guest updates the bootloader or the kernel copies on it.
  --customize-hook="echo 'PARTUUID=$ROOT_PARTUUID / ext4 rw,errors=remount-ro 0 1' > \"\$1/etc/fstab\""
  # NoCloud only, so nothing waits on a metadata service; network config stays enabled.
  # /etc/hosts follows the hostname the meta-data sets (else sudo cannot resolve it), as
  # Debian's cloud images configure it.
  --customize-hook='printf "datasource_list: [NoCloud, None]\nmanage_etc_hosts: true\n" > "$1/etc/cloud/cloud.cfg.d/99-runner-test.cfg"'
  # C.UTF-8 is built into libc. With it set, cloud-init's locale module has nothing to do;
  # unset, it runs update-locale, which minbase lacks (the locales package), and fails.
  --customize-hook='echo LANG=C.UTF-8 > "$1/etc/default/locale"'
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*'
  # mmdebstrap copies in the build host's name; a downloaded image has a neutral one.
  --customize-hook='echo debian > "$1/etc/hostname"'
  --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"'
)
mmdebstrap "${options[@]}" bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 ||
  { tail -30 "$WORK/mmdebstrap.log" >&2; exit 1; }

# The ESP: systemd-boot at the removable-media path that firmware with no boot entries (a
# fresh OVMF) looks for, one entry with the kernel and initrd, and no menu.
kernel=$(ls "$WORK"/rootfs/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$WORK"/rootfs/boot/initrd.img-* | sort -V | tail -n1)
cat >"$WORK/loader.conf" <<EOF
default debian.conf
timeout 0
editor no
EOF
cat >"$WORK/debian.conf" <<EOF
title   Debian GNU/Linux 12 (bookworm)
linux   /debian/vmlinuz
initrd  /debian/initrd.img
options root=PARTUUID=$ROOT_PARTUUID rw console=ttyS0
EOF
truncate -s $((ESP_SIZE * 512)) "$WORK/esp.img"
# -F: FAT32, as the UEFI specification asks of an ESP; -H: the sectors before it on the disk.
mformat -i "$WORK/esp.img" -F -H "$ESP_START" -v ESP ::
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/debian
mcopy -i "$WORK/esp.img" "$WORK/rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.img" "$WORK/loader.conf" ::/loader/loader.conf
mcopy -i "$WORK/esp.img" "$WORK/debian.conf" ::/loader/entries/debian.conf
mcopy -i "$WORK/esp.img" "$kernel" ::/debian/vmlinuz
mcopy -i "$WORK/esp.img" "$initrd" ::/debian/initrd.img

# The root partition, filled from the tree at mkfs time (-d): no mount needed.
truncate -s "$((ROOT_SIZE * 512))" "$WORK/root.img"
mkfs.ext4 -q -F -L root -U "$ROOT_FS_UUID" -d "$WORK/rootfs" "$WORK/root.img" "$((ROOT_SIZE / 2))k"
# Each intermediate goes as soon as it is used: the bake's peak disk use stays near 1 GiB.
rm -rf "$WORK/rootfs"

# The disk: a sparse file, a GPT written by sfdisk, both partitions copied in (sparse, so the
# free space of the root filesystem stays holes), then qcow2.
truncate -s "${DISK_MIB}M" "$WORK/disk.raw"
sfdisk -q --no-reread --no-tell-kernel "$WORK/disk.raw" >/dev/null <<EOF
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
start=$ESP_START, size=$ESP_SIZE, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="EFI System"
start=$ROOT_START, size=$ROOT_SIZE, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$ROOT_PARTUUID, name="root"
EOF
dd if="$WORK/esp.img" of="$WORK/disk.raw" bs=1M seek=$((ESP_START / MIB)) conv=notrunc,sparse status=none
dd if="$WORK/root.img" of="$WORK/disk.raw" bs=1M seek=$((ROOT_START / MIB)) conv=notrunc,sparse status=none
rm "$WORK/esp.img" "$WORK/root.img"
mkdir "$WORK/out"
qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/out/disk.qcow2"
mv "$WORK/out" "$OUT"
