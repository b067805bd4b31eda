#!/bin/bash
# bake.sh SUITE ARCH MIRROR OUTDIR [extra packages...]
#
# Produces OUTDIR/{base.qcow2,vmlinuz,initrd.img,manifest.txt} (+ vmlinux on
# amd64: uncompressed PVH-bootable ELF, boots ~0.5-1 s faster) for the runner
# guest contract:
#   - base.qcow2: ext4 filesystem on the whole disk (no partition table),
#     Debian minbase + openssh-server, NO kernel, NO initramfs-tools,
#     NO ssh host keys, /usr/local/sbin/runner-init as the init.
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
#                      virtio_rng; dependency closure is computed)
#   RUNNER_KERNEL_PKG  kernel package (default linux-image-cloud-$ARCH)
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
MODULES=${RUNNER_MODULES:-virtio_pci virtio_mmio virtio_blk virtio_net virtio_rng}
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

INCLUDE=openssh-server
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
  --format=directory "$SUITE" "$WORK/rootfs" "$MIRROR" 2>&1 \
  | while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done \
  >"$WORK/mmdebstrap-rootfs.log" || {
    tail -n 40 "$WORK/mmdebstrap-rootfs.log" >&2; exit 1; }
step_end

step_start "rootfs customisation"
R=$WORK/rootfs
# Nothing secret may be baked: host keys come from the per-VM seed.
rm -f "$R"/etc/ssh/ssh_host_*
install -D -m 0755 "$RUNNER_INIT" "$R/usr/local/sbin/runner-init"
# No poweroff/reboot binaries exist in minbase without an init system:
# provide tiny sysrq based ones (qemu is run with -no-reboot, so a guest
# reboot ends the VM too).
cat >"$R/usr/local/sbin/poweroff" <<'EOS'
#!/bin/sh
# runner: immediate power off (no clean unmount needed: disposable VM)
sync
echo o > /proc/sysrq-trigger
sleep 5
EOS
cat >"$R/usr/local/sbin/reboot" <<'EOS'
#!/bin/sh
# runner: immediate reset (qemu -no-reboot turns it into VM exit)
sync
echo b > /proc/sysrq-trigger
sleep 5
EOS
chmod 0755 "$R/usr/local/sbin/poweroff" "$R/usr/local/sbin/reboot"
ln -sf poweroff "$R/usr/local/sbin/halt"
# Guest apt: no translations (faster apt-get update inside the VM). The
# mmdebstrap --aptopt/--dpkgopt settings (no recommends, no docs/man/locale)
# stay in the image as 99mmdebstrap, so guest installs stay lean too.
printf 'Acquire::Languages "none";\n' >"$R/etc/apt/apt.conf.d/99runner"
# Host leftovers copied in by mmdebstrap (hostname, resolv.conf).
echo runner >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trunner\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"   # written by the initrd at boot
: >"$R/etc/machine-id" 2>/dev/null || true
rm -f "$R"/var/log/*.log "$R"/var/log/apt/* "$R"/var/cache/debconf/*-old \
      "$R"/var/lib/dpkg/*-old 2>/dev/null || true
step_end

step_start "mkfs.ext4 -d + qemu-img convert"
mkfs.ext4 -q -F -L runner-root -m 0 -d "$R" "$WORK/root.raw" "$IMAGE_SIZE"
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$OUT/base.qcow2"
rm -f "$WORK/root.raw"
step_end

# ---------------------------------------------------------------- kernel
step_start "kernel + busybox-static (mmdebstrap extract, no emulation)"
mmdebstrap --mode=root --variant=extract --arch="$ARCH" \
  --include="$KERNEL_PKG,busybox-static" "${APT_OPTS[@]}" \
  --format=directory "$SUITE" "$WORK/kx" "$MIRROR" \
  >"$WORK/mmdebstrap-kernel.log" 2>&1 || {
    tail -n 40 "$WORK/mmdebstrap-kernel.log" >&2; exit 1; }
KX=$WORK/kx
VMLINUZ=$(ls "$KX"/boot/vmlinuz-* | sort -V | tail -n1)
KVER=${VMLINUZ##*/vmlinuz-}
# /lib may be a symlink to usr/lib (merged /usr, trixie) or a real dir.
MODDIR=$KX/lib/modules/$KVER
[ -d "$MODDIR" ] || MODDIR=$KX/usr/lib/modules/$KVER
[ -d "$MODDIR" ] || { echo "no modules dir for $KVER" >&2; exit 1; }
BUSYBOX=$KX/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX=$KX/usr/bin/busybox
[ -x "$BUSYBOX" ] || { echo "busybox-static not found" >&2; exit 1; }
cp "$VMLINUZ" "$OUT/vmlinuz"
# x86: also provide the uncompressed ELF vmlinux (PVH entry point) which qemu
# can boot directly with -kernel, skipping the in-guest decompression.
# bzImage setup header: setup_sects @0x1f1, payload_offset @0x248,
# payload_length @0x24c; the payload is followed by its 4-byte
# decompressed size, which we use to validate the result.
if [ "$ARCH" = amd64 ]; then
  ss=$(od -An -tu1 -j $((0x1f1)) -N1 "$VMLINUZ" | tr -d ' ')
  [ "$ss" = 0 ] && ss=4
  po=$(od -An -tu4 -j $((0x248)) -N4 "$VMLINUZ" | tr -d ' ')
  pl=$(od -An -tu4 -j $((0x24c)) -N4 "$VMLINUZ" | tr -d ' ')
  off=$(( (ss + 1) * 512 + po ))
  magic=$(od -An -tx1 -j "$off" -N4 "$VMLINUZ" | tr -d ' ')
  case "$magic" in
    02214c18) dec="lz4 -dc" ;;
    1f8b*)    dec="gzip -dc" ;;
    fd377a58) dec="xz -dc --single-stream" ;;
    28b52ffd) dec="zstd -dc" ;;
    *)        dec="" ;;
  esac
  if [ -n "$dec" ]; then
    dd if="$VMLINUZ" of="$WORK/payload" bs=64K iflag=skip_bytes,count_bytes \
       skip="$off" count="$pl" status=none
    # (the trailing size word makes the decompressors complain: ignore rc)
    $dec <"$WORK/payload" >"$WORK/vmlinux" 2>/dev/null || true
    want=$(od -An -tu4 -j $((pl - 4)) -N4 "$WORK/payload" | tr -d ' ')
    rm -f "$WORK/payload"
    if [ "$(stat -c %s "$WORK/vmlinux")" = "$want" ] && \
       [ "$(od -An -c -N4 "$WORK/vmlinux" | tr -d ' ')" = '177ELF' ]; then
      mv "$WORK/vmlinux" "$OUT/vmlinux"
    else
      echo "warning: could not extract vmlinux (magic $magic); vmlinuz only" >&2
    fi
  else
    echo "warning: unknown bzImage payload compression $magic; vmlinuz only" >&2
  fi
fi
step_end

# ---------------------------------------------------------------- initrd
step_start "initrd (host-built newc cpio)"
S=$WORK/initrd
mkdir -p "$S"/bin "$S"/lib/modules "$S"/dev "$S"/proc "$S"/sys "$S"/newroot
install -m 0755 "$BUSYBOX" "$S/bin/busybox"
ln -s busybox "$S/bin/sh"
install -m 0755 "$INITRD_INIT" "$S/init"

# Index of every module file (name normalised: '-' -> '_').
find "$MODDIR" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \
  | while read -r p; do
      b=${p##*/}; b=${b%%.ko*}; printf '%s %s\n' "${b//-/_}" "$p"
    done >"$WORK/modindex"

declare -A SEEN=()
LOAD=()
visit() {
  local n=${1//-/_} p ko deps d
  [ -n "${SEEN[$n]:-}" ] && return 0
  SEEN[$n]=1
  p=$(awk -v n="$n" '$1 == n { print $2; exit }' "$WORK/modindex")
  if [ -z "$p" ]; then
    if grep -q "/${n}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
      return 0   # built in: nothing to load
    fi
    echo "kernel module $n not found (and not built in)" >&2
    return 1
  fi
  ko=$S/lib/modules/$n.ko
  case "$p" in
    *.ko.xz)  xz -dc "$p" >"$ko" ;;
    *.ko.zst) zstd -q -dc "$p" >"$ko" ;;
    *.ko.gz)  gzip -dc "$p" >"$ko" ;;
    *)        cp "$p" "$ko" ;;
  esac
  # The .modinfo section holds NUL separated "depends=a,b,c".
  deps=$(grep -a -o 'depends=[A-Za-z0-9_,-]*' "$ko" | sed -n '1s/^depends=//p')
  for d in ${deps//,/ }; do visit "$d"; done
  LOAD+=("$n.ko")
}
for m in $MODULES; do visit "$m"; done
printf '%s\n' "${LOAD[@]}" >"$S/lib/modules/load.list"

(cd "$S" && find . -mindepth 1 | LC_ALL=C sort \
   | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$OUT/initrd.img"
step_end

{
  echo "suite=$SUITE"
  echo "arch=$ARCH"
  echo "mirror=$MIRROR"
  echo "kernel_package=$KERNEL_PKG"
  echo "kernel_version=$KVER"
  echo "modules=${LOAD[*]}"
  echo "packages=$INCLUDE"
} >"$OUT/manifest.txt"
rm -f "$OUTDIR"/{base.qcow2,vmlinuz,vmlinux,initrd.img,manifest.txt}
mv "$OUT"/* "$OUTDIR"/
printf '== total: %.1f s\n' "$(awk -v a="$T0" -v b="$(now)" 'BEGIN{print b-a}')" >&2
cat "$OUTDIR/manifest.txt" >&2
ls -la "$OUTDIR" >&2
