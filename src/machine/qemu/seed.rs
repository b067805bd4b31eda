//! A machine's disks: a copy-on-write overlay on the cached base image, and the seed that
//! carries its identity.

use std::path::Path;

use tokio::process::Command;

use crate::config::Size;
use crate::error::{Error, IoContext, Result};
use crate::guest::GuestKeys;
use crate::machine::dir::write_private;

/// `size`: grown beyond the base (a cloud image's first boot grows its filesystem to it).
pub async fn overlay(base: &Path, format: &str, size: Option<Size>, overlay: &Path) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(overlay);
    if let Some(size) = size {
        cmd.arg(size.0.to_string());
    }
    qemu_img(cmd, "qemu-img create", overlay).await
}

/// The context slot's disk: a qcow2 of one fixed size (so every machine's matches the
/// snapshot's device), backed by the context pack's image when there is one; reads past the
/// image's end are zeros.
pub async fn context_slot(dir: &Path, pack: Option<&Path>) -> Result<()> {
    let disk = dir.join("context.qcow2");
    slot(&disk, pack.map(|p| (p, "raw")), Some("64G"), "context slot").await
}

/// The file of a machine's cache slot.
pub const CACHE_SLOT: &str = "cache.qcow2";

/// What a machine's cache slot holds.
pub enum CacheSlot<'a> {
    /// A template's: empty, as large as any cache may be, so that the size a restored guest
    /// believes (the template's) holds every cache's filesystem.
    Template,
    /// No cache: 1 MiB, so a guest writing to the bare disk cannot grow it on the host.
    Empty,
    /// A layer over this generation, as large as its filesystem: QEMU refuses writes past
    /// the end, whatever size a restored guest believes.
    Over(&'a Path),
}

/// The cache slot: always attached (a snapshot's devices are fixed) and writable.
pub async fn cache_slot(dir: &Path, slot_is: CacheSlot<'_>) -> Result<()> {
    let disk = dir.join(CACHE_SLOT);
    let (backing, size) = match slot_is {
        CacheSlot::Template => (None, Some("1T")),
        CacheSlot::Empty => (None, Some("1M")),
        CacheSlot::Over(g) => (Some((g, "qcow2")), None),
    };
    slot(&disk, backing, size, "cache slot").await
}

/// A qcow2 at `disk` over `backing` (a file and its format) if any, of virtual size `size`
/// (default: the backing file's).
async fn slot(
    disk: &Path,
    backing: Option<(&Path, &str)>,
    size: Option<&str>,
    what: &str,
) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some((file, format)) = backing {
        cmd.args(["-F", format, "-b"]).arg(file);
    }
    cmd.arg(disk).args(size);
    qemu_img(cmd, &format!("qemu-img create ({what})"), disk).await
}

/// Runs a `qemu-img` command; a failure names `what`, its status and stderr, and `disk`.
async fn qemu_img(mut cmd: Command, what: &str, disk: &Path) -> Result<()> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img` (is qemu-utils installed?)")?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: what.into(),
            status: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: disk.to_owned(),
        });
    }
    Ok(())
}

/// The seed is a plain tar written raw to a second disk: the guest's initrd unpacks it with
/// busybox tar. It carries the per-machine keys, so it is private and dies with the machine.
pub fn write_seed(path: &Path, keys: &GuestKeys, label: &str) -> Result<()> {
    write_private(path, &seed(keys, label)?)
}

/// An empty seed disk, for a warm-start template (whose seed comes over its serial port).
pub fn write_empty_seed(path: &Path) -> Result<()> {
    let bytes = tar::Builder::new(Vec::new())
        .into_inner()
        .ctx(|| "cannot make an empty seed")?;
    write_private(path, &bytes)
}

/// The size of a seed sent over the port: one tar record, which the guest reads by count
/// (`head -c`; the port has no end while the host keeps it open).
const SEED_RECORD: usize = 10240;

/// A machine's identity as a tar: its keys, hostname and machine-id, and — for a machine
/// restored from a snapshot — the wall clock and 64 bytes of the host's randomness. Padded
/// to exactly one tar record.
pub fn seed(keys: &GuestKeys, label: &str) -> Result<Vec<u8>> {
    let machine_id = machine_id();
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
        (
            "authorized_keys",
            0o600,
            keys.authorized_keys().into_bytes(),
        ),
        (
            "ssh_host_ed25519_key",
            0o600,
            keys.host_private_openssh()?.into_bytes(),
        ),
        (
            "hostname",
            0o644,
            format!("{}\n", hostname_of(label, &machine_id)).into_bytes(),
        ),
        ("machine-id", 0o644, format!("{machine_id}\n").into_bytes()),
        ("time", 0o644, format!("{}\n", wall_clock()).into_bytes()),
        ("random", 0o600, rand::random::<[u8; 64]>().to_vec()),
    ];
    for (name, mode, data) in files {
        add(name, mode, &data).ctx(|| "cannot build the seed archive")?;
    }
    let mut bytes = tar.into_inner().ctx(|| "cannot finish the seed archive")?;
    if bytes.len() > SEED_RECORD {
        return Err(Error::other(
            "a machine's seed outgrew its 10240-byte record",
        ));
    }
    bytes.resize(SEED_RECORD, 0);
    Ok(bytes)
}

/// Now, as `seconds.nanoseconds` since the epoch: the clock a restored guest sets.
fn wall_clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// A fresh machine id: 128 random bits as 32 lowercase hex digits, as machine-id(5) wants.
pub fn machine_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A machine's hostname: its label in letters, digits and `-`, and the start of its
/// machine-id, at most 63 characters. Two machines of one target (say, restored from one
/// snapshot) never share one; a build must not depend on it, as on any machine's identity.
pub fn hostname_of(label: &str, machine_id: &str) -> String {
    let name: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(54)
        .collect();
    let name = if name.is_empty() { "runner" } else { &name };
    let id: String = machine_id.chars().take(8).collect();
    format!("{name}-{id}")
}

/// How long a local cloud machine may live before its own dead-man switch powers it off,
/// should runner be gone (killed with SIGKILL, say) and nobody run `runner gc`: past the
/// longest target timeout (48 h) and its boot, so it never cuts a build short.
pub const CLOUD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(50 * 3600);

/// A cloud image's seed: a NoCloud `cidata` FAT volume carrying the same user data an EC2
/// machine gets (runner's client key for `user`, the pinned host key, the dead-man switch)
/// and a fresh instance id, so cloud-init treats every machine as a first boot.
pub fn write_nocloud(path: &Path, keys: &GuestKeys, user: &str, label: &str) -> Result<()> {
    use std::io::Write;
    let expires = crate::host::now_unix() + CLOUD_LIFETIME.as_secs();
    let user_data = crate::machine::cloud_init::cloud_config(keys, user, expires, None)?;
    let id = machine_id();
    let meta_data = format!(
        "instance-id: runner-{id}\nlocal-hostname: {}\n",
        hostname_of(label, &id)
    );
    let mut volume = std::io::Cursor::new(vec![0u8; 2 << 20]);
    fatfs::format_volume(
        &mut volume,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .ctx(|| "cannot format the NoCloud seed")?;
    {
        let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new())
            .ctx(|| "cannot open the NoCloud seed")?;
        for (name, text) in [("user-data", user_data), ("meta-data", meta_data)] {
            let mut f = fs
                .root_dir()
                .create_file(name)
                .ctx(|| format!("cannot add `{name}` to the NoCloud seed"))?;
            f.write_all(text.as_bytes())
                .ctx(|| format!("cannot write `{name}` to the NoCloud seed"))?;
        }
        fs.unmount().ctx(|| "cannot finish the NoCloud seed")?;
    }
    write_private(path, &volume.into_inner())
}
