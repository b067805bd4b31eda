# Sourced by bake.sh: the initramfs, built on the host: static busybox, the init, the
# virtio module closure (insmod order precomputed), and the device nodes of modules that
# are loaded on first open (/dev/fuse, /dev/loop-control, ...), copied into /dev at boot
# so opening one makes the kernel load its module.
step_start "initrd (host-built newc cpio)"
S=$WORK/initrd
mkdir -p "$S"/bin "$S"/lib/modules "$S"/dev "$S"/proc "$S"/sys "$S"/newroot
install -m 0755 "$BUSYBOX" "$S/bin/busybox"
ln -s busybox "$S/bin/sh"
install -m 0755 "$INITRD_INIT" "$S/init"
# The warm start's reseed helper, built for the guest where the host can (its own arch; an
# arm64 image needs aarch64-linux-gnu-gcc). Without it a restored arm64 guest reseeds later.
case "$ARCH" in
  amd64) CC_FOR_GUEST=$( [ "$(uname -m)" = x86_64 ] && command -v cc || command -v x86_64-linux-gnu-gcc || true) ;;
  arm64) CC_FOR_GUEST=$( [ "$(uname -m)" = aarch64 ] && command -v cc || command -v aarch64-linux-gnu-gcc || true) ;;
esac
if [ -n "$CC_FOR_GUEST" ]; then
  "$CC_FOR_GUEST" -static -Os -s -o "$S/bin/runner-reseed" "$HERE/reseed.c"
fi

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

# modules.devname: "module devname <type><major>:<minor>", e.g. "fuse fuse c10:229".
mkdir -p "$S/devnodes"
while read -r _ name dev; do
  case "$name" in ''|\#*) continue ;; esac
  majmin=${dev:1}
  mkdir -p "$S/devnodes/$(dirname "$name")"
  mknod -m 0600 "$S/devnodes/$name" "${dev:0:1}" "${majmin%%:*}" "${majmin##*:}"
done < <(grep -v '^#' "$MODDEST/modules.devname" 2>/dev/null || true)
[ -e "$S/devnodes/fuse" ] && chmod 0666 "$S/devnodes/fuse"

(cd "$S" && find . -mindepth 1 | LC_ALL=C sort \
   | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$OUT/initrd.img"
step_end

