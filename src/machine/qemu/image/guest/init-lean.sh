# Sourced by bake.sh for init = "lean": runner-init execs sshd as PID 1; nothing else runs.
# No poweroff/reboot binaries exist in minbase without an init system: provide tiny sysrq
# based ones (qemu is run with -no-reboot, so a guest reboot ends the VM too).
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
# sshd's options as PID 1, the per-machine keys from the seed in /run/runner.
# UsePAM=no: saves ~0.6 s per login under TCG (no pam_motd/update-motd etc.).
mkdir -p "$R/usr/local/lib/runner"
printf '%s\n' "-D -e -o HostKey=/run/runner/ssh_host_ed25519_key \
-o AuthorizedKeysFile=/run/runner/authorized_keys -o PermitRootLogin=prohibit-password \
-o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o UsePAM=no -o UseDNS=no" \
  >"$R/usr/local/lib/runner/sshd-args"
ln -sf poweroff "$R/usr/local/sbin/halt"
