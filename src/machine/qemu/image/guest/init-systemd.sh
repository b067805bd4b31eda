# Sourced by bake.sh for init = "systemd": the image's own systemd boots (PID 1 straight
# from runner's initrd), so services work (`systemctl start postgresql`), while SSH keeps
# runner's contract: per-VM keys from the seed in /run/runner, the pinned host key only.
mkdir -p "$R/etc/ssh/sshd_config.d" "$R/etc/systemd/system/ssh.service.d"
cat >"$R/etc/ssh/sshd_config.d/00-runner.conf" <<'EOS'
# runner: the per-machine keys the initrd put in /run/runner (nothing secret is baked).
HostKey /run/runner/ssh_host_ed25519_key
AuthorizedKeysFile /run/runner/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOS
# sshd's "Server listening" on the serial console is runner's readiness signal.
cat >"$R/etc/systemd/system/ssh.service.d/runner.conf" <<'EOS'
[Service]
ExecStart=
ExecStart=/usr/sbin/sshd -D -e $SSHD_OPTS
StandardOutput=journal+console
StandardError=journal+console
EOS
# Nothing here waits for a network manager, a display or a clock source runner does not have:
# the initrd configured eth0, the host's clock is the VM's. No getty on the serial console
# either: the image has no udev, so its device unit never appears, and the getty's start
# would wait 90 s for it (`systemctl is-system-running --wait` too, then say "degraded").
for unit in systemd-networkd-wait-online.service getty@tty1.service serial-getty@.service \
            systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$R/etc/systemd/system/$unit"
done
# The initrd mounts /run with the seed in it; systemd keeps an existing /run.
