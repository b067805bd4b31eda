//! The context packed once per run: the deterministic tar (what the digest and every guest
//! see) and, for local machines, an ext4 image of the same tree, kept in the cache under the
//! context digest and the epoch (the tar's mtimes) and reused while the context is unchanged.
//! Parallel targets over one context wait for one packer and reuse its work.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use super::{Context, write_tar};
use crate::digest::sha256_file;
use crate::error::{Error, IoContext, Result};

#[derive(Clone)]
pub struct Pack {
    pub dir: PathBuf,
    /// The deterministic tar of the context.
    pub tar: PathBuf,
    pub tar_sha256: String,
    pub tar_bytes: u64,
    /// An ext4 filesystem of the same tree, attached read-only to local machines.
    pub image: PathBuf,
    /// Made by this call (not found in the cache).
    pub made: bool,
    /// A shared lock on the pack while any clone lives: `prune` (another run's) leaves a pack
    /// in use alone.
    _in_use: Option<Arc<Flock<File>>>,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack")
            .field("dir", &self.dir)
            .field("tar_sha256", &self.tar_sha256)
            .field("made", &self.made)
            .finish()
    }
}

/// The pack of `ctx` (whose digest is `digest`) with mtimes `epoch`, made if the cache lacks
/// it. Blocking (hashing, writing, mkfs): run it in `spawn_blocking`.
pub fn ensure(cache: &Path, ctx: &Context, digest: &str, epoch: u64) -> Result<Pack> {
    let packs = cache.join("packs");
    // Each pack is a copy of a source tree: the user's alone (0700 here, 0600 inside).
    crate::private::dir(&packs)?;
    let name = format!("{}-{epoch}", &digest[..32.min(digest.len())]);
    let dir = packs.join(&name);
    // Two locks: `.lock`, held shared by every run using the pack (so `prune` in another run,
    // which needs it exclusively, leaves it alone), and `.make.lock`, held exclusively by the
    // one that makes it while the others wait. A user never waits for another's use.
    let locked = |file: &str, arg| {
        let f = File::create(packs.join(file))
            .ctx(|| format!("cannot create a lock in `{}`", packs.display()))?;
        Flock::lock(f, arg).map_err(|(_, source)| Error::Lock {
            what: format!("context pack `{}`", packs.join(file).display()),
            source,
        })
    };
    let in_use = locked(&format!("{name}.lock"), FlockArg::LockShared)?;
    let made = match open(&dir) {
        Some(_) => false,
        None => {
            let _making = locked(&format!("{name}.make.lock"), FlockArg::LockExclusive)?;
            // Another run may have made it while this one waited for the lock.
            let made = open(&dir).is_none();
            if made {
                make(&packs, &name, &dir, ctx, epoch)?;
            }
            made
        }
    };
    // Used now: the newest, for `prune`.
    let _ = File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    let mut pack = open(&dir).ok_or_else(|| Error::BadFile {
        path: dir.clone(),
        problem: "the context pack vanished right after it was made".into(),
    })?;
    pack.made = made;
    pack._in_use = Some(Arc::new(in_use));
    Ok(pack)
}

/// Writes the pack into a scratch directory, then renames it into place.
fn make(packs: &Path, name: &str, dir: &Path, ctx: &Context, epoch: u64) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".pack-{name}-"))
        .tempdir_in(packs)
        .ctx(|| format!("cannot create a scratch directory in `{}`", packs.display()))?;
    let tar = scratch.path().join("context.tar");
    let out = crate::private::create(&tar)?;
    let summary = write_tar(ctx, BufWriter::new(out), epoch)?;
    make_image(&tar, scratch.path(), summary.tar_bytes)?;
    crate::private::write(&scratch.path().join("sha256"), &summary.tar_sha256)?;
    let kept = scratch.keep();
    // tempfile makes its directories 0700 already; said here so no later change loosens it.
    crate::private::restrict(&kept, 0o700)?;
    std::fs::rename(&kept, dir).ctx(|| format!("cannot move the pack to `{}`", dir.display()))
}

fn open(dir: &Path) -> Option<Pack> {
    let tar = dir.join("context.tar");
    let image = dir.join("context.img");
    let tar_sha256 = std::fs::read_to_string(dir.join("sha256")).ok()?;
    let tar_bytes = std::fs::metadata(&tar).ok()?.len();
    image.is_file().then(|| Pack {
        dir: dir.to_owned(),
        tar,
        tar_sha256: tar_sha256.trim().to_owned(),
        tar_bytes,
        image,
        made: false,
        _in_use: None,
    })
}

/// `context.img` in `scratch`: an ext4 filesystem of the tar's tree, made without mounting:
/// the tree is unpacked into the pack's own scratch (private, and found by `gc` if runner is
/// killed meanwhile; the tar is runner's own, so it is trusted) and `mkfs.ext4 -d` copies it.
fn make_image(tar: &Path, scratch: &Path, tar_bytes: u64) -> Result<()> {
    let image = &scratch.join("context.img");
    let tree = tempfile::tempdir_in(scratch).ctx(|| "cannot create a temporary directory")?;
    let mut archive = tar::Archive::new(File::open(tar).ctx(|| "cannot reopen the context tar")?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive
        .unpack(tree.path())
        .ctx(|| "cannot unpack the context tar for its image")?;
    // Room for the data, its metadata and ext4's own, with a floor for tiny contexts.
    let entries = count_entries(tree.path());
    let size_kib = ((tar_bytes + entries * 4096) * 5 / 4 / 1024).max(8 << 10);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "runner-ctx",
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-N")
        .arg((entries + 64).to_string())
        .arg("-d")
        .arg(tree.path())
        .arg(image)
        .arg(format!("{size_kib}k"))
        .output()
        .ctx(|| "cannot run mkfs.ext4 (is e2fsprogs installed?)")?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: "mkfs.ext4 (context image)".into(),
            status: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: image.to_owned(),
        });
    }
    let _ = std::io::stdout().flush();
    crate::private::restrict(image, 0o600)
}

fn count_entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    1 + if is_dir { count_entries(&p) } else { 0 }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Confirms a pack's tar still has its recorded digest (before it is handed out remotely).
pub fn check(pack: &Pack) -> Result<()> {
    let got = sha256_file(&pack.tar)?;
    if got != pack.tar_sha256 {
        return Err(Error::BadFile {
            path: pack.tar.clone(),
            problem: format!("sha256 {got}, recorded {}", pack.tar_sha256),
        });
    }
    Ok(())
}

/// The pack's tar, zstd-compressed (for fetching by URL), made on first use beside it, and
/// that file's sha256.
pub async fn compressed(pack: &Pack) -> Result<(PathBuf, String)> {
    let out = pack.dir.join("context.tar.zst");
    let sum = pack.dir.join("context.tar.zst.sha256");
    if let (true, Ok(s)) = (out.is_file(), std::fs::read_to_string(&sum)) {
        return Ok((out, s.trim().to_owned()));
    }
    let part = tempfile::Builder::new()
        .prefix(".zst-")
        .tempfile_in(&pack.dir)
        .ctx(|| format!("cannot create a file in `{}`", pack.dir.display()))?;
    let status = tokio::process::Command::new("zstd")
        .args(["-q", "-f", "-3", "-T0", "-o"])
        .arg(part.path())
        .arg(&pack.tar)
        .status()
        .await
        .ctx(|| "cannot run zstd (is it installed?)")?;
    if !status.success() {
        return Err(Error::Tool {
            program: "zstd".into(),
            status: status.to_string(),
            log: pack.tar.clone(),
        });
    }
    let sha256 = sha256_file(part.path())?;
    part.persist(&out)
        .map_err(|e| e.error)
        .ctx(|| format!("cannot keep `{}`", out.display()))?;
    crate::private::write(&sum, &sha256)?;
    Ok((out, sha256))
}

/// Keeps the newest `keep` packs in `cache/packs`, removing the rest (each is a copy of a
/// context, twice over: the cache must not grow with every edit).
pub fn prune(cache: &Path, keep: usize) {
    let packs = cache.join("packs");
    let Ok(rd) = std::fs::read_dir(&packs) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, d) in dirs.into_iter().take(excess) {
        // Not one a build is packing or using right now: its lock is held (see `ensure`).
        // Held while removing, so no run starts using it meanwhile. (The lock file stays: a
        // run may have opened it already, and a removed one would not be the same lock.)
        let Ok(f) = File::create(d.with_extension("lock")) else {
            continue;
        };
        if let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// Scratch of packs whose maker is gone (a runner killed mid-pack): a copy of a source tree
/// each, for `runner gc`.
pub fn stale_scratch(cache: &Path) -> Vec<PathBuf> {
    let packs = cache.join("packs");
    let Ok(rd) = std::fs::read_dir(&packs) else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            // `.pack-<name>-<random>`, made while `<name>.make.lock` is held.
            let (name, _) = file.strip_prefix(".pack-")?.rsplit_once('-')?;
            let free = crate::host::lock_free(&packs.join(format!("{name}.make.lock")));
            free.then(|| e.path())
        })
        .collect();
    found.sort();
    found
}

/// `runner gc`'s view of the packs: scratch nobody is making any more.
pub struct PackSweeper {
    pub cache: PathBuf,
}

#[async_trait::async_trait]
impl crate::leftovers::Sweeper for PackSweeper {
    async fn find(&self) -> Vec<crate::leftovers::Finding> {
        use crate::leftovers::{Finding, Leftover};
        stale_scratch(&self.cache)
            .into_iter()
            .map(|dir| Finding::Found(Leftover::path("unfinished context pack", dir)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_whose_maker_is_gone_is_stale_and_a_held_one_is_not() {
        let cache = tempfile::tempdir().unwrap();
        let packs = cache.path().join("packs");
        let (dead, live) = ("aa-1", "bb-1");
        for name in [dead, live] {
            std::fs::create_dir_all(packs.join(format!(".pack-{name}-Xy12Zq"))).unwrap();
        }
        std::fs::create_dir_all(packs.join("cc-1")).unwrap();
        let lock = std::fs::File::create(packs.join(format!("{live}.make.lock"))).unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        assert_eq!(
            super::stale_scratch(cache.path()),
            vec![packs.join(format!(".pack-{dead}-Xy12Zq"))]
        );
    }
}
