//! Build caches: guest directories (`cache = [...]` of a target) whose contents outlive the
//! machine, so a fresh machine need not download and compile everything again.
//!
//! A cache belongs to one [`Key`]: the target (or its `cache_key`), the builder recipe and
//! the cached paths. Nothing else ever reads it, so one build cannot poison another's cache.
//! Locally a key holds *generations*, `gen-<n>.qcow2`, each a whole ext4 filesystem image
//! that never changes once written:
//! - a machine reads the newest generation through a copy-on-write layer of its own (the
//!   backend attaches it; the guest bind-mounts the cached paths from it);
//! - after the target's artifacts are collected, the guest freezes the filesystem and the
//!   host flattens generation + layer into `gen-next.*.part` ([`Caches::flatten`]), measured
//!   against `max_cache_size` before anything is published;
//! - only once the build is published is the part renamed to `gen-<newest + 1>.qcow2`
//!   ([`Pending::commit`]), an atomic rename. A failed, timed-out or cancelled build drops
//!   its part, and the generation it read stays the newest. Parallel builds of one key all
//!   read the same generation; the last to commit wins.
//!
//! Every reader holds a shared lock on the generation it reads, so pruning never removes a
//! generation a running build still needs; a part carries a lock of its maker, so `runner gc`
//! can tell a dead runner's part from one being written.
//!
//! A cache's bytes are the guest's: the host never mounts or parses them. It handles the
//! image only through `qemu-img`, whose format metadata QEMU wrote, never the guest.

mod disk;
pub mod list;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// How many generations of a key are kept besides those a running build reads.
const KEEP: usize = 2;

/// Where a host's caches live: `<cache dir>/caches/<key>/`.
#[derive(Debug, Clone)]
pub struct Caches {
    root: PathBuf,
}

/// Which builds share a cache: its directory name, `<target or cache_key>-<12 hex>` where the
/// hex covers the project, the name (and whether it is a target's or a `cache_key`), the
/// builder recipe and the cached paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

/// What a key's `key.json` says of it, for `runner cache ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct About {
    /// The project's directory: another project's target of the same name never shares it.
    pub project: String,
    pub name: String,
    /// Named by `cache_key` (shared on purpose), not a target's own.
    pub shared: bool,
    pub recipe_digest: String,
    pub paths: Vec<String>,
}

impl Key {
    /// The key of a cache of `paths` in `project`: `name` is a target's, or (`shared`) a
    /// `cache_key`.
    pub fn of(
        project: &Path,
        (name, shared): (&str, bool),
        paths: &[String],
        recipe_digest: &str,
    ) -> (Key, About) {
        let about = About {
            project: project.display().to_string(),
            name: name.to_owned(),
            shared,
            recipe_digest: recipe_digest.to_owned(),
            paths: paths.to_vec(),
        };
        let json = serde_json::to_string(&about).expect("a cache key serializes");
        let hex = crate::digest::sha256_hex(json.as_bytes());
        (Key(format!("{name}-{}", &hex[..12])), about)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A generation as a build reads it; the shared lock keeps it from being pruned meanwhile.
#[derive(Debug)]
pub struct Generation {
    pub n: u64,
    pub path: PathBuf,
    /// The image's sha256: what the manifest records as the cache the build saw.
    pub sha256: String,
    _reading: Flock<File>,
}

/// A flattened next generation, not yet a generation: committed only after the build is
/// published; dropped (and its file removed) otherwise.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    part: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    _making: Flock<File>,
}

impl Caches {
    pub fn new(cache_dir: &Path) -> Caches {
        Caches {
            root: cache_dir.join("caches"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The newest generation of `key`, read-locked; generation 0 (an empty filesystem of
    /// `fs_bytes`) is made first when the key has none. Blocking.
    pub fn current(&self, key: &Key, about: &About, fs_bytes: u64) -> Result<Generation> {
        let dir = self.dir(key);
        crate::private::dir(&dir)?;
        let _key = lock(&dir.join("lock"), FlockArg::LockExclusive)?;
        // What a killed runner left here goes now, rather than waiting for `runner gc`.
        list::remove_dead_parts(&dir);
        let n = match newest(&dir) {
            Some(n) => n,
            None => {
                crate::private::write(
                    &dir.join("key.json"),
                    serde_json::to_vec_pretty(about).expect("serializes"),
                )?;
                let mut first = Pending::start(&dir, "gen-0")?;
                disk::empty(&first.part, fs_bytes)?;
                first.sha256 = crate::digest::sha256_file(&first.part)?;
                first.install()?
            }
        };
        let path = gen_path(&dir, n);
        let digest = path.with_extension("sha256");
        let sha256 = crate::safe_read::read_capped(&digest, 128)
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .ok()
            .filter(|s| crate::config::names::is_sha256_lower(s))
            .ok_or_else(|| Error::CacheRefused {
                key: key.as_str().to_owned(),
                problem: format!(
                    "generation {n} has no readable digest (`{}`); remove the cache with \
                     `runner cache rm {}`",
                    digest.display(),
                    key.as_str()
                ),
            })?;
        Ok(Generation {
            n,
            sha256,
            _reading: lock(&path, FlockArg::LockShared)?,
            path,
        })
    }

    /// Flattens `layer` (a machine's copy-on-write layer over a generation of `key`, its
    /// filesystem frozen) into a part of the next generation, refused when it holds more than
    /// `limit` bytes. Dropped meanwhile (Ctrl-C, the deadline), it kills `qemu-img` and
    /// removes the part.
    pub async fn flatten(&self, key: &Key, layer: &Path, limit: u64) -> Result<Pending> {
        let tag = crate::digest::sha256_hex(layer.as_os_str().as_encoded_bytes());
        let dir = self.dir(key);
        // Started under the key's lock, as a sweep of dead parts runs under it: a sweep never
        // sees this part's lock file before its lock is held.
        let key_lock = lock(&dir.join("lock"), FlockArg::LockExclusive)?;
        let mut pending = Pending::start(&dir, &format!("gen-next.{}", &tag[..8]))?;
        drop(key_lock);
        disk::flatten(layer, &pending.part).await?;
        let bytes = std::fs::metadata(&pending.part)
            .ctx(|| format!("cannot stat `{}`", pending.part.display()))?
            .len();
        if bytes > limit {
            return Err(Error::CacheRefused {
                key: key.as_str().to_owned(),
                problem: format!(
                    "the new generation holds {:.1} MiB, over max_cache_size {}M; the \
                     previous generation stays (raise [limits] max_cache_size, or cache less)",
                    bytes as f64 / (1u64 << 20) as f64,
                    limit.div_ceil(1 << 20)
                ),
            });
        }
        pending.bytes = bytes;
        let part = pending.part.clone();
        pending.sha256 = crate::error::joined(
            "hashing a cache generation",
            tokio::task::spawn_blocking(move || crate::digest::sha256_file(&part)),
        )
        .await?;
        Ok(pending)
    }
}

impl Pending {
    /// An empty part named after `what` and this process, locked as being made.
    fn start(dir: &Path, what: &str) -> Result<Pending> {
        let part = dir.join(format!("{what}.{}.part", std::process::id()));
        Ok(Pending {
            dir: dir.to_owned(),
            _making: lock(&part.with_extension("lock"), FlockArg::LockExclusive)?,
            part,
            bytes: 0,
            sha256: String::new(),
        })
    }

    /// Makes the part the key's newest generation (an atomic rename) and prunes what is no
    /// longer needed. Returns the new generation's number. Blocking.
    pub fn commit(self) -> Result<u64> {
        let _key = lock(&self.dir.join("lock"), FlockArg::LockExclusive)?;
        self.install()
    }

    /// [`Pending::commit`] under the key's lock, which the caller holds.
    fn install(self) -> Result<u64> {
        let n = newest(&self.dir).map_or(0, |n| n + 1);
        let path = gen_path(&self.dir, n);
        // The digest first, whole (written aside, synced, renamed), then the image: a crash
        // between them leaves a digest without an image, never an image without its digest.
        let digest = self.part.with_extension("sha256");
        let f = crate::private::create(&digest)?;
        (&f).write_all(self.sha256.as_bytes())
            .and_then(|()| f.sync_all())
            .ctx(|| format!("cannot write `{}`", digest.display()))?;
        std::fs::rename(&digest, path.with_extension("sha256"))
            .ctx(|| format!("cannot rename `{}`", digest.display()))?;
        File::open(&self.part)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("cannot sync `{}`", self.part.display()))?;
        std::fs::rename(&self.part, &path)
            .ctx(|| format!("cannot commit `{}`", self.part.display()))?;
        prune(&self.dir, n);
        Ok(n)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // After a commit the part is gone and this does nothing.
        let _ = std::fs::remove_file(&self.part);
        let _ = std::fs::remove_file(self.part.with_extension("sha256"));
        let _ = std::fs::remove_file(self.part.with_extension("lock"));
    }
}

fn gen_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("gen-{n}.qcow2"))
}

/// The generations in `dir`, oldest first.
fn generations(dir: &Path) -> Vec<u64> {
    let mut ns: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("gen-")?
                .strip_suffix(".qcow2")?
                .parse()
                .ok()
        })
        .collect();
    ns.sort_unstable();
    ns
}

fn newest(dir: &Path) -> Option<u64> {
    generations(dir).last().copied()
}

/// Removes generations older than the newest [`KEEP`] that no build reads any more.
fn prune(dir: &Path, newest: u64) {
    for n in generations(dir) {
        let path = gen_path(dir, n);
        if n + KEEP as u64 > newest || !crate::host::lock_free(&path) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("sha256"));
    }
}

/// A blocking `flock` on `path` (created if missing).
pub(crate) fn lock(path: &Path, how: FlockArg) -> Result<Flock<File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("cannot open `{}`", path.display()))?;
    Flock::lock(f, how).map_err(|(_, source)| Error::Lock {
        what: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
