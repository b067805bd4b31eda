//! What `runner cache ls|rm` and `runner gc` see of the caches on this host.

use std::path::{Path, PathBuf};

use nix::fcntl::FlockArg;
use serde::Serialize;

use super::{About, Caches, gen_path, generations};
use crate::error::{Error, Result};
use crate::leftovers::{Finding, Leftover, Sweeper};

/// One key's cache.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub key: String,
    /// `None` when its `key.json` is missing or unreadable.
    pub about: Option<About>,
    /// (generation, bytes), oldest first.
    pub generations: Vec<(u64, u64)>,
    pub bytes: u64,
    /// A running build reads or writes it.
    pub in_use: bool,
}

impl Caches {
    /// Every key's cache, by key.
    pub fn list(&self) -> Vec<Entry> {
        let mut keys: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.is_dir())
            .collect();
        keys.sort();
        keys.iter().map(|dir| entry(dir)).collect()
    }

    /// Removes the caches named `name`: a key, or the target or `cache_key` of `project`
    /// they belong to; returns the keys removed. One a running build uses is left, and said.
    pub fn remove(&self, name: &str, project: &Path) -> Result<Vec<String>> {
        let project = project.display().to_string();
        let hits: Vec<Entry> = self
            .list()
            .into_iter()
            .filter(|e| {
                e.key == name
                    || e.about
                        .as_ref()
                        .is_some_and(|a| a.name == name && a.project == project)
            })
            .collect();
        if hits.is_empty() {
            return Err(Error::BadArgument {
                problem: format!("no cache `{name}` in this project (see `runner cache ls`)"),
            });
        }
        hits.iter().map(|e| self.remove_key(&e.key)).collect()
    }

    /// Removes one key's directory, unless a build uses it: under the key's lock (no build
    /// starts reading meanwhile), re-checked, renamed aside, then deleted.
    fn remove_key(&self, key: &str) -> Result<String> {
        let dir = self.root.join(key);
        let busy = || Error::BadArgument {
            problem: format!("cache `{key}` is in use by a running build"),
        };
        let _lock =
            super::lock(&dir.join("lock"), FlockArg::LockExclusiveNonblock).map_err(|_| busy())?;
        if entry(&dir).in_use {
            return Err(busy());
        }
        let aside = self.root.join(format!(".removed-{key}"));
        let io = |source| Error::Io {
            context: format!("cannot remove `{}`", dir.display()),
            source,
        };
        std::fs::rename(&dir, &aside).map_err(io)?;
        std::fs::remove_dir_all(&aside).map_err(io)?;
        Ok(key.to_owned())
    }
}

fn entry(dir: &Path) -> Entry {
    let about = crate::safe_read::read_capped(&dir.join("key.json"), 64 << 10)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let generations: Vec<(u64, u64)> = generations(dir)
        .into_iter()
        .map(|n| {
            let len = std::fs::metadata(gen_path(dir, n)).map_or(0, |m| m.len());
            (n, len)
        })
        .collect();
    let in_use = generations
        .iter()
        .any(|(n, _)| !crate::host::lock_free(&gen_path(dir, *n)))
        || !parts(dir)
            .iter()
            .all(|p| crate::host::lock_free(&lock_of(p)));
    Entry {
        key: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        about,
        bytes: generations.iter().map(|(_, b)| b).sum(),
        generations,
        in_use,
    }
}

/// The parts (unfinished generations) in a key's directory.
fn parts(dir: &Path) -> Vec<PathBuf> {
    scratch(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect()
}

/// Everything in a key's directory but its generations, their digests, `key.json` and the
/// key's lock: what making a generation leaves until it is committed or dropped.
fn scratch(dir: &Path) -> Vec<PathBuf> {
    let kept = |name: &str| {
        let generation = name
            .strip_prefix("gen-")
            .and_then(|r| {
                r.strip_suffix(".qcow2")
                    .or_else(|| r.strip_suffix(".sha256"))
            })
            .is_some_and(|n| n.parse::<u64>().is_ok());
        generation || name == "key.json" || name == "lock"
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| !p.file_name().is_some_and(|n| kept(&n.to_string_lossy())))
        .collect()
}

/// Removes the scratch in `dir` whose maker is gone (its lock is free, or was never taken).
pub(super) fn remove_dead_parts(dir: &Path) {
    for file in scratch(dir) {
        if crate::host::lock_free(&lock_of(&file)) {
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// The lock of a scratch file: `<stem>.lock` (a lock file is its own).
fn lock_of(file: &Path) -> PathBuf {
    file.with_extension("lock")
}

/// Unfinished generations whose maker is gone: what a runner killed while saving left (and
/// what `.removed-*` left of a key being removed).
pub struct PartSweeper {
    pub caches: Caches,
}

#[async_trait::async_trait]
impl Sweeper for PartSweeper {
    async fn find(&self) -> Vec<Finding> {
        let entries = std::fs::read_dir(self.caches.root()).into_iter().flatten();
        let mut found = vec![];
        for dir in entries.filter_map(|e| Some(e.ok()?.path())) {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.starts_with(".removed-") {
                found.push(Finding::Found(Leftover::path("half-removed cache", dir)));
                continue;
            }
            for part in parts(&dir) {
                found.push(Finding::Found(
                    match crate::host::lock_free(&lock_of(&part)) {
                        false => Leftover::in_use(format!(
                            "cache generation being saved {}",
                            part.display()
                        )),
                        true => Leftover::orphan(
                            format!("unfinished cache generation {}", part.display()),
                            {
                                let dir = dir.clone();
                                async move {
                                    // Under the key's lock, as a build clears what it finds.
                                    let _key =
                                        super::lock(&dir.join("lock"), FlockArg::LockExclusive)?;
                                    remove_dead_parts(&dir);
                                    Ok(String::new())
                                }
                            },
                        ),
                    },
                ));
            }
        }
        found
    }
}
