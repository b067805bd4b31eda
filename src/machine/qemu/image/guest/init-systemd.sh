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
# It starts as soon as systemd does, not after sysinit (journald, its flush, tmpfiles: ~3 s
# under TCG), and without a second sshd checking the configuration first: a build that
# needs the whole system up waits for it (`systemctl is-system-running --wait`).
cat >"$R/etc/systemd/system/ssh.service.d/runner.conf" <<'EOS'
[Unit]
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStartPre=
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
# Generators for what a runner machine never has (encrypted, integrity or verity volumes, a
# GPT root to discover, hibernation, a boot-time update, a getty on the serial console): each
# is a program systemd runs before it starts any unit, ~0.1 s apiece under TCG. fstab, rc.local
# and SysV scripts (which a build's packages may ship) keep theirs.
mkdir -p "$R/etc/systemd/system-generators"
for g in systemd-cryptsetup-generator systemd-integritysetup-generator \
         systemd-veritysetup-generator systemd-gpt-auto-generator \
         systemd-hibernate-resume-generator systemd-system-update-generator \
         systemd-getty-generator systemd-debug-generator systemd-run-generator \
         systemd-bless-boot-generator; do
  ln -sf /dev/null "$R/etc/systemd/system-generators/$g"
done
# The initrd mounts /run with the seed in it; systemd keeps an existing /run.
