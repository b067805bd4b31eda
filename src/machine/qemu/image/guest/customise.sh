#!/bin/sh
# Seals a customised cloud image (run as root, last, in its customising boot): everything
# that made this boot one particular machine goes, so each machine booted from the image is
# a first boot with its own identity, keys and cloud-init run.
# Usage: customise.sh SSH_USER
set -u
user=$1

# Package caches: the image is copied into every machine; they need none of it.
if command -v apt-get >/dev/null; then apt-get clean
elif command -v dnf >/dev/null; then dnf clean all -q
elif command -v zypper >/dev/null; then zypper -q clean -a
elif command -v apk >/dev/null; then rm -rf /var/cache/apk/*
fi

# cloud-init: instance state, seed cache and logs; the next boot is a new instance.
# (--machine-id is newer than some images' cloud-init; the lines below cover it.)
cloud-init clean --logs --machine-id 2>/dev/null || cloud-init clean --logs || rm -rf /var/lib/cloud/*

# machine-id empty: systemd makes a new one at boot (its first-boot convention). A first boot
# also applies the unit presets, which on some distributions differ from what is enabled
# (Debian's preset enables systemd-networkd beside ifupdown, and its wait-online then holds
# the boot for two minutes): a preset of what is enabled now keeps every service as it is.
if command -v systemctl >/dev/null && [ -d /etc/systemd ]; then
  mkdir -p /etc/systemd/system-preset
  systemctl list-unit-files --no-legend --no-pager --state=enabled,disabled 2>/dev/null |
    awk '{ print ($2 == "enabled" ? "enable " : "disable ") $1 }' \
      > /etc/systemd/system-preset/00-runner-sealed.preset
fi
[ -e /etc/machine-id ] && : > /etc/machine-id
rm -f /var/lib/dbus/machine-id

# Host keys: every machine's comes from runner, pinned; none may be shared.
rm -f /etc/ssh/ssh_host_*

# The customising boot's own login key.
rm -f /root/.ssh/authorized_keys
home=$(getent passwd "$user" | cut -d: -f6)
[ -n "$home" ] && rm -f "$home/.ssh/authorized_keys"

rm -rf /tmp/* /var/tmp/* 2>/dev/null
# Freed blocks back to the disk image (the root disk is attached with discard=unmap), so the
# derived image holds only what is used.
fstrim -a 2>/dev/null || fstrim / 2>/dev/null
sync
echo "runner-customise: sealed"
