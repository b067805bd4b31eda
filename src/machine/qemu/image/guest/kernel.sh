# Sourced by bake.sh: the Debian cloud kernel and busybox-static, extracted on the host
# (nothing runs under emulation here). Sets KX, KVER, MODDIR, BUSYBOX; writes
# $OUT/vmlinuz (and $OUT/vmlinux on amd64).
step_start "kernel + busybox-static (mmdebstrap extract, no emulation)"
mmdebstrap --mode=root --variant=extract --arch="$ARCH" \
  --include="$KERNEL_PKG,busybox-static" "${APT_OPTS[@]}" \
  --format=directory -- "$SUITE" "$WORK/kx" "$MIRROR" \
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

