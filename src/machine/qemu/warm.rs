//! Warm starts: a machine restored from a snapshot instead of booted, with a fresh identity.
//!
//! Per image, shape, accelerator and QEMU version, a template machine boots once with
//! `runner.warm=1`: its initrd mounts the root read-only, reads no seed, and waits on a
//! virtio-serial port. There — before the machine has any identity (no host key, no
//! authorized key, no machine-id) and before anything was written to its disk — QEMU saves
//! it to a file. Each warm machine then gets its own copy-on-write overlay (identical to what
//! the template saw: nothing was written), restores the file with `-incoming`, and receives
//! its seed over the port: fresh keys, hostname, machine-id, the wall clock and host
//! randomness that the guest feeds its kernel's generator before anything draws from it
//! (a restored kernel otherwise repeats the snapshot's random numbers). Only then does its
//! sshd start, and runner pins the fresh host key as on a cold boot. The kernel makes its
//! boot_id on the first read and cannot change it after: the template never reads it, so each
//! restored machine's is its own (drawn after the reseed).
//!
//! Anything that goes wrong on the way — no snapshot can be made, a file that will not load
//! (corrupt, or from another QEMU) — ends in a cold boot, said in the log; never a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::command::{LAYOUT, board};
use super::qmp::Qmp;
use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};

/// The state of a snapshot being saved, renamed to `state` once complete.
const PART: &str = "state.part";

/// How long a restore may take before runner gives up on it (and boots cold).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a snapshot is valid for; any difference means another snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Key {
    /// The recipe digest and the disk's own: a rebake of one recipe is another disk.
    pub image: String,
    pub disk: String,
    pub arch: String,
    pub accel: String,
    pub machine: String,
    pub cpu: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub qemu: String,
    pub layout: u32,
}

impl Key {
    pub fn new(
        image: &super::image::Image,
        accel: super::command::Accel,
        shape: crate::config::Shape,
        qemu: &str,
    ) -> Key {
        let b = board(image.arch, accel);
        Key {
            image: image.digest.clone(),
            disk: image.info.base_sha256.clone(),
            arch: image.arch.debian().into(),
            accel: accel.qemu_name().into(),
            machine: b.machine.into(),
            cpu: b.cpu.into(),
            vcpus: shape.vcpus,
            memory_mib: shape.memory.mib(),
            qemu: qemu.to_owned(),
            layout: LAYOUT,
        }
    }

    pub fn id(&self) -> String {
        sha256_hex(&serde_json::to_vec(self).expect("a key serializes"))[..16].to_owned()
    }
}

/// A snapshot on disk: `<image>/snapshots/<key id>/{ram, state, snapshot.json}`: the
/// guest's memory, its devices' state, and what it was made for (written last).
pub struct Snapshot {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub ram: PathBuf,
}

impl Snapshot {
    pub fn at(image_dir: &Path, key: &Key) -> Snapshot {
        let dir = image_dir.join("snapshots").join(key.id());
        Snapshot {
            state: dir.join("state"),
            ram: dir.join("ram"),
            dir,
        }
    }

    pub fn id(&self) -> String {
        self.dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// Present, complete, and made for exactly `key`.
    pub fn usable(&self, key: &Key) -> bool {
        let Ok(bytes) = std::fs::read(self.dir.join("snapshot.json")) else {
            return false;
        };
        serde_json::from_slice::<Key>(&bytes).is_ok_and(|k| k == *key)
            && self.state.is_file()
            && self.ram.is_file()
    }

    /// Forgets a snapshot that would not restore, so the next machine makes a new one.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The snapshot's lock, held while one process makes it; others wait at most `timeout`
    /// (a maker that hangs must not hang them: they boot cold).
    pub async fn lock(&self, timeout: Duration) -> Result<nix::fcntl::Flock<std::fs::File>> {
        use nix::fcntl::{Flock, FlockArg};
        // A machine's memory, saved: private like the context packs it may come to hold.
        crate::private::dir(&self.dir)?;
        let path = self.dir.with_extension("lock");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = std::fs::File::create(&path).ctx(|| "cannot create a snapshot lock")?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(held) => return Ok(held),
                Err((_, nix::errno::Errno::EWOULDBLOCK))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(Error::Snapshot {
                        problem: format!(
                            "another runner has been making this snapshot for over {}s",
                            timeout.as_secs()
                        ),
                        source: None,
                    });
                }
                Err((_, source)) => {
                    return Err(Error::Lock {
                        what: format!("snapshot `{}`", path.display()),
                        source,
                    });
                }
            }
        }
    }
}

/// A snapshot kept for an image, for `runner image list` and `rm`.
pub struct Kept {
    pub id: String,
    pub key: Key,
    pub bytes: u64,
    pub dir: PathBuf,
}

/// The complete snapshots in `image_dir`, whatever they were made for.
pub fn kept(image_dir: &Path) -> Vec<Kept> {
    let Ok(rd) = std::fs::read_dir(image_dir.join("snapshots")) else {
        return vec![];
    };
    let mut out: Vec<Kept> = rd
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let key: Key =
                serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).ok()?).ok()?;
            use std::os::unix::fs::MetadataExt;
            let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.blocks() * 512);
            let bytes = size("state").ok()? + size("ram").unwrap_or(0);
            let id = dir.file_name()?.to_string_lossy().into_owned();
            Some(Kept {
                id,
                key,
                bytes,
                dir,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Saves the template machine whose QMP socket is `qmp` to `snap` once it waits for its
/// seed (`ready` says when), then writes the key: the snapshot is complete.
pub async fn save(qmp: &Path, snap: &Snapshot, key: &Key) -> Result<()> {
    // Removed again unless kept, also when this future is dropped (Ctrl-C mid-save); what
    // a killed runner left, `gc` finds (see `stale_parts`).
    struct Part(PathBuf);
    impl Drop for Part {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let part = Part(snap.dir.join(PART));
    save_to(qmp, &part.0).await?;
    keep(&part.0, snap, key)
}

/// Snapshots being made whose lock nobody holds — what a killed runner left: a state being
/// written, and the memory of a snapshot never completed.
pub fn stale_parts(images: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(images) else {
        return vec![];
    };
    rd.filter_map(|e| std::fs::read_dir(e.ok()?.path().join("snapshots")).ok())
        .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|dir| crate::host::lock_free(&dir.with_extension("lock")))
        .flat_map(|dir| {
            let unfinished = !dir.join("snapshot.json").exists();
            [Some(dir.join(PART)), unfinished.then(|| dir.join("ram"))]
        })
        .flatten()
        .filter(|f| f.exists())
        .collect()
}

async fn save_to(qmp: &Path, part: &Path) -> Result<()> {
    // Made 0600 here: `cat >` would make it with QEMU's umask (and keeps an existing mode).
    drop(crate::private::create(part)?);
    let mut q = Qmp::connect(qmp).await?;
    q.execute("stop", json!({})).await?;
    ignore_shared(&mut q).await?;
    q.execute(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", part.display()) }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let info = q.execute("query-migrate", json!({})).await?;
        match info["status"].as_str().unwrap_or_default() {
            "completed" => break,
            "failed" | "cancelled" => {
                return Err(Error::Snapshot {
                    problem: format!(
                        "saving the snapshot failed: {}",
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    ),
                    source: None,
                });
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(Error::Snapshot {
                    problem: "saving the snapshot took over 5 minutes".into(),
                    source: None,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(())
}

/// Memory the guest's mapping shares with a file is not part of the saved state: it is
/// the snapshot's `ram` file. Set on both sides of a save and a restore.
async fn ignore_shared(q: &mut Qmp) -> Result<()> {
    let caps = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
    q.execute("migrate-set-capabilities", caps).await?;
    Ok(())
}

/// Renames the saved state into place and records its key: the snapshot is complete. The
/// memory file is on disk first (the template wrote it through its mapping).
fn keep(part: &Path, snap: &Snapshot, key: &Key) -> Result<()> {
    std::fs::File::open(&snap.ram)
        .and_then(|f| f.sync_all())
        .ctx(|| "cannot keep the snapshot's memory")?;
    std::fs::rename(part, &snap.state).ctx(|| "cannot keep the snapshot")?;
    crate::private::write(
        &snap.dir.join("snapshot.json"),
        serde_json::to_vec_pretty(key).expect("a key serializes"),
    )?;
    Ok(())
}

/// Waits until the restored machine is loaded (QMP answers `paused` or `running`), resumes
/// it, and hands it the seed `seed` makes over the serial port. An error means: boot cold
/// instead.
pub async fn resume(
    dir: &Path,
    state: &Path,
    seed: &(dyn Fn() -> Result<Vec<u8>> + Send + Sync),
    exited: &mut (dyn FnMut() -> bool + Send),
) -> Result<tokio::net::UnixStream> {
    let deadline = tokio::time::Instant::now() + RESTORE_TIMEOUT;
    let mut q = loop {
        if exited() {
            return Err(Error::Snapshot {
                problem: "QEMU exited while restoring the snapshot".into(),
                source: None,
            });
        }
        match Qmp::connect(&dir.join("qmp.sock")).await {
            Ok(q) => break q,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e),
        }
    };
    ignore_shared(&mut q).await?;
    let uri = format!("exec:cat {}", state.display());
    q.execute("migrate-incoming", json!({ "uri": uri })).await?;
    loop {
        let status = q.execute("query-status", json!({})).await?;
        match status["status"].as_str().unwrap_or_default() {
            "paused" | "running" | "postmigrate" => break,
            "inmigrate" if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => {
                return Err(Error::Snapshot {
                    problem: format!("restore did not finish ({other})"),
                    source: None,
                });
            }
        }
    }
    q.execute("cont", json!({})).await?;
    let mut port = tokio::net::UnixStream::connect(dir.join("seed.sock"))
        .await
        .ctx(|| "cannot connect to the machine's seed port")?;
    // Made now, so the wall clock in it is as fresh as it can be.
    port.write_all(&seed()?)
        .await
        .ctx(|| "cannot send the seed")?;
    port.flush().await.ctx(|| "cannot send the seed")?;
    // Kept open (by the machine) until its teardown: closed, the guest could see the end of
    // the port before it read all of the seed.
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            image: "recipe".into(),
            disk: "disk".into(),
            arch: "amd64".into(),
            accel: "tcg".into(),
            machine: "q35".into(),
            cpu: "qemu64".into(),
            vcpus: 2,
            memory_mib: 1024,
            qemu: "QEMU emulator version 7.2.22".into(),
            layout: LAYOUT,
        }
    }

    #[test]
    fn any_change_of_what_a_snapshot_depends_on_is_another_snapshot() {
        let base = key();
        let changes: [fn(&mut Key); 7] = [
            |k| k.disk = "rebaked".into(),
            |k| k.image = "other recipe".into(),
            |k| k.vcpus = 4,
            |k| k.memory_mib = 2048,
            |k| k.accel = "kvm".into(),
            |k| k.qemu = "QEMU emulator version 8.2.0".into(),
            |k| k.layout += 1,
        ];
        for change in changes {
            let mut k = key();
            change(&mut k);
            assert_ne!(k.id(), base.id());
        }
    }

    #[test]
    fn a_snapshot_whose_record_names_another_key_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let k = key();
        let snap = Snapshot::at(tmp.path(), &k);
        assert!(!snap.usable(&k), "nothing made yet");
        std::fs::create_dir_all(&snap.dir).unwrap();
        std::fs::write(&snap.state, b"state").unwrap();
        std::fs::write(&snap.ram, b"ram").unwrap();
        let stale = Key {
            qemu: "QEMU emulator version 6.0".into(),
            ..key()
        };
        std::fs::write(
            snap.dir.join("snapshot.json"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        assert!(!snap.usable(&k));
        std::fs::write(
            snap.dir.join("snapshot.json"),
            serde_json::to_vec(&k).unwrap(),
        )
        .unwrap();
        assert!(snap.usable(&k));
        assert_eq!(kept(tmp.path()).len(), 1);
    }
}
