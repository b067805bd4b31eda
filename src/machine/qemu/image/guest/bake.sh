#!/bin/bash
# bake.sh SUITE ARCH MIRROR OUTDIR [extra packages...]
#
# Produces OUTDIR/{base.qcow2,vmlinuz,initrd.img,manifest.txt} (+ vmlinux on
# amd64: uncompressed PVH-bootable ELF, boots ~0.5-1 s faster) for the runner
# guest contract:
#   - base.qcow2: ext4 filesystem on the whole disk (no partition table),
#     Debian minbase + openssh-server + kmod, the kernel's module tree (no
#     kernel image, NO initramfs-tools), NO ssh host keys, no machine-id;
#     init: /usr/local/sbin/runner-init (lean) or systemd.
#   - vmlinuz/initrd.img: Debian cloud kernel + a busybox initramfs built
#     entirely on the host (nothing runs under emulation for this part).
#
# Must run as root (mmdebstrap --mode=root, mkfs.ext4 -d keeps ownership).
# Host needs: mmdebstrap, e2fsprogs (mkfs.ext4 >= 1.43 for -d), qemu-utils,
# cpio, xz-utils, zstd, and for a foreign ARCH: qemu-user-static +
# binfmt-support (mmdebstrap runs the maintainer scripts through binfmt).
#
# Environment knobs:
#   RUNNER_IMAGE_SIZE  ext4 size (default 4G; the file is sparse and
#                      qemu-img convert skips zeros, so size costs ~nothing)
#   RUNNER_MODULES     space separated module names to put in the initrd
#                      (default: virtio_pci virtio_mmio virtio_blk virtio_net
#                      virtio_rng binfmt_misc; dependency closure is computed)
#   RUNNER_KERNEL_PKG  kernel package (default linux-image-cloud-$ARCH)
#   RUNNER_INIT_KIND   lean (default: sshd as PID 1 after runner-init) or
#                      systemd (the image's systemd boots; services work)
#   RUNNER_KEEP_WORK=1 keep the work dir (rootfs tree, kernel extract)
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 SUITE ARCH MIRROR OUTDIR [extra packages...]" >&2
  exit 2
fi
SUITE=$1 ARCH=$2 MIRROR=$3 OUTDIR=$4
shift 4
EXTRA=("$@")

HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
INITRD_INIT=$HERE/initrd-init
RUNNER_INIT=$HERE/runner-init
for f in "$INITRD_INIT" "$RUNNER_INIT"; do
  [ -r "$f" ] || { echo "missing $f" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

IMAGE_SIZE=${RUNNER_IMAGE_SIZE:-4G}
# binfmt_misc is loaded early so the initrd can mount it (cross builds under qemu-user);
# virtio_console carries a warm start's seed.
MODULES=${RUNNER_MODULES:-virtio_pci virtio_mmio virtio_blk virtio_net virtio_rng virtio_console binfmt_misc}
INIT_KIND=${RUNNER_INIT_KIND:-lean}
case "$INIT_KIND" in lean|systemd) ;; *) echo "unknown init kind $INIT_KIND" >&2; exit 2 ;; esac
KERNEL_PKG=${RUNNER_KERNEL_PKG:-linux-image-cloud-$ARCH}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "$OUTDIR/.work.XXXXXX")
# Outputs are assembled in $OUT and only moved into OUTDIR at the very end,
# so a failed bake never leaves a mix of old and new artifacts.
OUT=$WORK/out
mkdir -p "$OUT"
cleanup() {
  if [ "${RUNNER_KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
T0=$(now)
step_start() { STEP=$1; TS=$(now); echo "== $STEP" >&2; }
step_end() { printf '== %s: %.1f s\n' "$STEP" "$(awk -v a="$TS" -v b="$(now)" 'BEGIN{print b-a}')" >&2; }

# Everything mmdebstrap/dpkg must not unpack (saves time, mostly under
# qemu-user for foreign arches, and space).
DPKG_OPTS=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/linda/*'
)
APT_OPTS=(
  --aptopt='APT::Install-Recommends "false"'
  --aptopt='APT::Install-Suggests "false"'
)

# kmod: modprobe, which the kernel also runs to load a module on demand (mounting an
# overlay, a netfilter table, opening /dev/fuse). zstd and curl: a context pack fetched by
# URL, artifacts compressed in transit.
INCLUDE=openssh-server,kmod,zstd,curl
if [ "$INIT_KIND" = systemd ]; then INCLUDE+=",systemd,systemd-sysv"; fi
for p in "${EXTRA[@]}"; do INCLUDE+=",$p"; done

# ---------------------------------------------------------------- rootfs
step_start "rootfs ($SUITE/$ARCH, mmdebstrap minbase)"
# maybe-merged-usr: set up merged /usr with symlinks (debootstrap style) and
#   install usr-is-merged instead of the usrmerge package, which would drag in
#   perl (~50 MB) and run a perl conversion under qemu-user for foreign arches.
# essential-hook: empty placeholder host keys make openssh-server's postinst
#   skip ssh-keygen (RSA keygen is slow under qemu-user); they are deleted in
#   the customize step anyway since host keys come from the per-VM seed.
mmdebstrap --mode=root --variant=minbase --arch="$ARCH" \
  --include="$INCLUDE" "${APT_OPTS[@]}" "${DPKG_OPTS[@]}" \
  --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr \
  --essential-hook='mkdir -p "$1/etc/ssh" && for t in rsa ecdsa ed25519; do touch "$1/etc/ssh/ssh_host_${t}_key"; done' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  --format=directory -- "$SUITE" "$WORK/rootfs" "$MIRROR" 2>&1 \
  | while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done \
  >"$WORK/mmdebstrap-rootfs.log" || {
    tail -n 40 "$WORK/mmdebstrap-rootfs.log" >&2; exit 1; }
step_end

. "$HERE/kernel.sh"

step_start "rootfs customisation ($INIT_KIND init)"
R=$WORK/rootfs
# Nothing secret may be baked: host keys come from the per-VM seed.
rm -f "$R"/etc/ssh/ssh_host_*
install -D -m 0755 "$RUNNER_INIT" "$R/usr/local/sbin/runner-init"
# The kernel's whole module tree, so `modprobe` (and the kernel's on-demand loading) finds
# overlay, br_netfilter, veth, nf_tables, loop, fuse, ...; the initrd keeps only the boot
# closure, so booting does not get slower for it.
MODDEST=$R/lib/modules/$KVER
mkdir -p "$R/lib/modules"
cp -a "$MODDIR" "$MODDEST"
depmod -b "$R" "$KVER"
. "$HERE/init-$INIT_KIND.sh"
# Guest apt: no translations (faster apt-get update inside the VM). The
# mmdebstrap --aptopt/--dpkgopt settings (no recommends, no docs/man/locale)
# stay in the image as 99mmdebstrap, so guest installs stay lean too.
printf 'Acquire::Languages "none";\n' >"$R/etc/apt/apt.conf.d/99runner"
# Host leftovers copied in by mmdebstrap (hostname, resolv.conf).
echo runner >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trunner\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"   # written by the initrd at boot
: >"$R/etc/machine-id"   # each VM's is written from its seed at boot
rm -f "$R"/var/log/*.log "$R"/var/log/apt/* "$R"/var/cache/debconf/*-old \
      "$R"/var/lib/dpkg/*-old 2>/dev/null || true
step_end

step_start "mkfs.ext4 -d + qemu-img convert"
mkfs.ext4 -q -F -L runner-root -m 0 -d "$R" "$WORK/root.raw" "$IMAGE_SIZE"
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/base.qcow2"
rm -f "$WORK/root.raw"
step_end

# ---------------------------------------------------------------- initrd
. "$HERE/initrd.sh"

{
  echo "suite=$SUITE"
  echo "arch=$ARCH"
  echo "mirror=$MIRROR"
  echo "kernel_package=$KERNEL_PKG"
  echo "kernel_version=$KVER"
  echo "initrd_modules=${LOAD[*]}"
  echo "init=$INIT_KIND"
  echo "packages=$INCLUDE"
} >"$OUT/manifest.txt"
rm -f "$OUTDIR"/{base.qcow2,vmlinuz,vmlinux,initrd.img,manifest.txt}
mv "$OUT"/* "$OUTDIR"/
printf '== total: %.1f s\n' "$(awk -v a="$T0" -v b="$(now)" 'BEGIN{print b-a}')" >&2
cat "$OUTDIR/manifest.txt" >&2
ls -la "$OUTDIR" >&2
