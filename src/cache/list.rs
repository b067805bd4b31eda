//! What `runner cache ls|rm` and `runner gc` see of the caches on this host.

use std::path::{Path, PathBuf};

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

    /// Removes the caches named `name` (a key, or the target or `cache_key` it belongs to);
    /// returns the keys removed. One a running build uses is refused.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        let hits: Vec<Entry> = self
            .list()
            .into_iter()
            .filter(|e| e.key == name || e.about.as_ref().is_some_and(|a| a.name == name))
            .collect();
        if hits.is_empty() {
            return Err(Error::BadArgument {
                problem: format!("no cache `{name}` (see `runner cache ls`)"),
            });
        }
        let mut removed = vec![];
        for e in hits {
            if e.in_use {
                return Err(Error::BadArgument {
                    problem: format!("cache `{}` is in use by a running build", e.key),
                });
            }
            let dir = self.root.join(&e.key);
            std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                context: format!("cannot remove `{}`", dir.display()),
                source,
            })?;
            removed.push(e.key);
        }
        Ok(removed)
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
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect()
}

/// Removes the parts in `dir` whose maker is gone.
pub(super) fn remove_dead_parts(dir: &Path) {
    for part in parts(dir) {
        let lock = lock_of(&part);
        if crate::host::lock_free(&lock) {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&lock);
        }
    }
}

fn lock_of(part: &Path) -> PathBuf {
    part.with_extension("lock")
}

/// Parts whose maker is gone: what a runner killed mid-commit left.
pub struct PartSweeper {
    pub caches: Caches,
}

#[async_trait::async_trait]
impl Sweeper for PartSweeper {
    async fn find(&self) -> Vec<Finding> {
        let keys = std::fs::read_dir(self.caches.root()).into_iter().flatten();
        let mut found = vec![];
        for dir in keys.filter_map(|e| Some(e.ok()?.path())) {
            for part in parts(&dir) {
                let lock = lock_of(&part);
                found.push(Finding::Found(match crate::host::lock_free(&lock) {
                    false => {
                        Leftover::in_use(format!("cache generation being saved {}", part.display()))
                    }
                    true => Leftover::orphan(
                        format!("unfinished cache generation {}", part.display()),
                        async move {
                            let _ = std::fs::remove_file(&part);
                            let _ = std::fs::remove_file(&lock);
                            Ok(String::new())
                        },
                    ),
                }));
            }
        }
        found
    }
}
