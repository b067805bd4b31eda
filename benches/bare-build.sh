#!/usr/bin/env bash
# The hand-written baseline for benches/build.rs: what one build costs with nothing but
# qemu, OpenSSH and tar, on runner's own image and guest contract (seed disk, pinned keys).
# Usage: bare-build.sh IMAGE_DIR CONTEXT_DIR SCRIPT OUT_DIR
set -euo pipefail
IMG=$1 CTX=$2 SCRIPT=$3 OUT=$4
W=$(mktemp -d)
QPID=
trap '[ -n "$QPID" ] && kill $QPID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
ssh-keygen -q -t ed25519 -N '' -f "$W/client"
ssh-keygen -q -t ed25519 -N '' -f "$W/host"
mkdir "$W/seed"
cp "$W/client.pub" "$W/seed/authorized_keys"
cp "$W/host" "$W/seed/ssh_host_ed25519_key"
echo bare > "$W/seed/hostname"
tar -C "$W/seed" -cf "$W/seed.tar" authorized_keys ssh_host_ed25519_key hostname
qemu-img create -q -f qcow2 -F qcow2 -b "$IMG/base.qcow2" "$W/overlay.qcow2"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
qemu-system-x86_64 -machine q35 -accel tcg -cpu qemu64 -smp 2 -m 1024M -nodefaults \
  -display none -no-reboot -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw panic=-1 quiet" \
  -drive "file=$W/overlay.qcow2,if=none,id=root,format=qcow2" -device virtio-blk-pci,drive=root \
  -drive "file=$W/seed.tar,if=none,id=seed,format=raw,readonly=on" -device virtio-blk-pci,drive=seed \
  -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net-pci,netdev=n \
  -device virtio-rng-pci -serial null &
QPID=$!
echo "[127.0.0.1]:$PORT $(cat "$W/host.pub")" > "$W/known"
SSH=(ssh -i "$W/client" -o "UserKnownHostsFile=$W/known" -o StrictHostKeyChecking=yes
     -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR -p "$PORT" root@127.0.0.1)
until "${SSH[@]}" true 2>/dev/null; do sleep 0.2; done
tar -C "$CTX" -cf - . | "${SSH[@]}" 'mkdir -p /build/src /build/out && tar -x -C /build/src'
"${SSH[@]}" 'cd /build/src && RUNNER_OUT=/build/out sh -s' < "$SCRIPT"
mkdir -p "$OUT"
"${SSH[@]}" 'cd /build/out && tar -cf - .' | tar -x -C "$OUT"
