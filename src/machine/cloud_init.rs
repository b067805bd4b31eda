//! The cloud-init user data every cloud machine boots with: an EC2 instance, and a local
//! QEMU machine on a cloud image (through a NoCloud seed). It installs runner's per-machine client key and host key
//! (so the host key is pinned exactly as with QEMU, never trusted on first use), and arms a
//! dead-man switch that powers the machine off at its expiry time even if runner is gone;
//! with `InstanceInitiatedShutdownBehavior=terminate`, powering off ends the billing.

use crate::error::Result;
use crate::guest::keys::{GuestKeys, openssh_public};

/// The `#cloud-config` document for one machine. `expires_unix` is absolute, so a reboot
/// re-arms the switch for the time that is left rather than a fresh lifetime.
pub fn cloud_config(
    keys: &GuestKeys,
    user: &str,
    expires_unix: u64,
    context_url: Option<&str>,
) -> Result<String> {
    let host_private = keys.host_private_openssh()?;
    let host_public = openssh_public(keys.host_public());
    let client = openssh_public(keys.client.public_key());
    let mut y = String::new();
    y.push_str("#cloud-config\n");
    y.push_str("# runner: one disposable machine, its own SSH keys, and a dead-man switch.\n");
    // Only runner's host key: delete the image's; ed25519 is generated only if missing, and
    // it is given below. (An empty list is what one would write, but the schema refuses it.)
    y.push_str("ssh_deletekeys: true\nssh_genkeytypes: [ed25519]\nssh_pwauth: false\n");
    y.push_str("ssh_keys:\n  ed25519_private: |\n");
    for line in host_private.lines() {
        y.push_str(&format!("    {line}\n"));
    }
    y.push_str(&format!("  ed25519_public: {host_public}\n"));
    if user == "root" {
        // Top-level keys go to root too when root logins are allowed (key only).
        y.push_str("disable_root: false\n");
        y.push_str(&format!("ssh_authorized_keys:\n  - {client}\n"));
    } else {
        y.push_str("disable_root: true\nusers:\n");
        y.push_str(&format!(
            "  - name: {user}\n    shell: /bin/bash\n    lock_passwd: true\n    \
             sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {client}\n"
        ));
    }
    y.push_str("bootcmd:\n");
    // On the serial console: the machine's network is up and its sshd about to start (it is
    // ordered after this stage), so SSH attempts no longer stall.
    y.push_str(&format!(
        "  - [sh, -c, \"echo {CONSOLE_MARKER} > /dev/console\"]\n"
    ));
    y.push_str(&format!(
        "  - [sh, -c, {}]\n",
        yaml_quote(&deadman(expires_unix))
    ));
    // The guest contract's working directory, writable whoever logs in.
    y.push_str("  - [install, -d, -m, \"1777\", /build]\n");
    if let Some(url) = context_url {
        // The context pack, fetched while the rest boots; runner checks its digest before
        // it unpacks it (and fetches again if this did not finish).
        y.push_str("runcmd:\n");
        y.push_str(&format!(
            "  - [sh, -c, {}]\n",
            yaml_quote(&format!(
                "curl -fsS --retry 5 -o {PREFETCH}.part {} && mv {PREFETCH}.part {PREFETCH}",
                crate::guest::quote(url)
            ))
        ));
    }
    Ok(y)
}

/// What a cloud machine prints on its console once cloud-init runs.
pub const CONSOLE_MARKER: &str = "runner-cloud: cloud-init";

/// Where a machine's user data fetches its context pack to.
pub const PREFETCH: &str = crate::guest::PREFETCHED_PACK;

/// Powers the machine off at `expires_unix`: a detached `sleep` then an immediate power-off
/// (no orderly stop, which could hang past the deadline). Not a systemd timer: bootcmd runs
/// inside cloud-init.service, ordered before sysinit.target, and `systemd-run` blocks there
/// (the boot hangs — seen under test). The sleeper outlives bootcmd because cloud-init.service
/// remains active after it exits.
pub fn deadman(expires_unix: u64) -> String {
    format!(
        "left=$(( {expires_unix} - $(date +%s) )); [ \"$left\" -gt 0 ] || left=1; \
         setsid -f sh -c 'sleep \"$0\"; poweroff -f' \"$left\" </dev/null >/dev/null 2>&1"
    )
}

/// A YAML double-quoted scalar.
fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_both_keys_and_the_switch() {
        let keys = GuestKeys::generate().unwrap();
        let doc = cloud_config(&keys, "root", 1_900_000_000, None).unwrap();
        assert!(doc.starts_with("#cloud-config\n"));
        assert!(doc.contains(&openssh_public(keys.client.public_key())));
        assert!(doc.contains(&openssh_public(keys.host_public())));
        assert!(doc.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(doc.contains("1900000000 - $(date +%s)"));
        assert!(doc.contains("disable_root: false"));
        let admin = cloud_config(&keys, "admin", 1, Some("https://s3/x?sig")).unwrap();
        assert!(admin.contains("runcmd:") && admin.contains("https://s3/x?sig"));
        assert!(admin.contains("  - name: admin\n") && admin.contains("disable_root: true"));
    }
}
