//! A machine's disks: a copy-on-write overlay on the cached base image, and the seed that
//! carries its identity.

use std::path::Path;

use tokio::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::guest::GuestKeys;
use crate::machine::dir::write_private;

pub async fn overlay(base: &Path, overlay: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img` (is qemu-utils installed?)")?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: "qemu-img create".into(),
            status: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: overlay.to_owned(),
        });
    }
    Ok(())
}

/// The seed is a plain tar written raw to a second disk: the guest's initrd unpacks it with
/// busybox tar. It carries the per-machine keys, so it is private and dies with the machine.
pub fn write_seed(path: &Path, keys: &GuestKeys, hostname: &str) -> Result<()> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    let files = [
        ("authorized_keys", 0o600, keys.authorized_keys()),
        ("ssh_host_ed25519_key", 0o600, keys.host_private_openssh()?),
        ("hostname", 0o644, format!("{}\n", hostname_of(hostname))),
        ("machine-id", 0o644, format!("{}\n", machine_id())),
    ];
    for (name, mode, text) in files {
        add(name, mode, text.as_bytes()).ctx(|| "cannot build the seed archive")?;
    }
    let bytes = tar.into_inner().ctx(|| "cannot finish the seed archive")?;
    write_private(path, &bytes)
}

/// A fresh machine id: 128 random bits as 32 lowercase hex digits, as machine-id(5) wants.
pub fn machine_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A label as a hostname: letters, digits and `-`, at most 63 characters.
pub fn hostname_of(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}
