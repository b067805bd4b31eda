//! A run: many targets, each in a fresh machine. [`dispatch`] starts targets while slots are
//! free; [`target`] takes one target from start to finish and turns how it ended into a
//! result; [`phases`] is the pipeline itself, one function per phase. [`Run::new`] (in
//! `setup`) is the one place a run is made.

pub mod budget;
mod cache;
pub mod dispatch;
mod failure;
mod inputs;
mod phases;
mod setup;
mod target;
#[cfg(test)]
mod tests;
mod transfer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::events::Emitter;
use crate::machine::Machines;
use crate::provenance::keys::SigningKey;
use crate::store::ArtifactStore;

pub use dispatch::Options;
pub use failure::Failure;
pub use inputs::{Declared, declared};
pub use setup::{Host, Planned, RunOptions, store_of};

/// Everything the targets of one run share: passed to every task as one value. Made by
/// [`Run::new`] alone.
pub struct Run {
    pub machines: Arc<Machines>,
    /// The store of targets that upload nowhere (the local artifact directory).
    pub local: Arc<dyn ArtifactStore>,
    /// What a guest may send back, how long its leftovers are waited for, how much of each
    /// log and console is kept.
    pub limits: Limits,
    pub emitter: Emitter,
    /// Cancelled by the first Ctrl-C / SIGTERM: every target tears down in order.
    pub cancel: CancellationToken,
    /// Leave a failed target's machine running for inspection.
    pub keep_failed: bool,
    /// Build even when a published build has the same inputs.
    pub force: bool,
    /// SOURCE_DATE_EPOCH for every target, and the mtime of every context entry.
    pub epoch: u64,
    /// Where target logs go.
    pub logs: PathBuf,
    /// What a context leaves out.
    pub excludes: Excludes,
    /// Signs every published build's provenance; `None`: published unsigned (and said so).
    pub signing: Option<Arc<SigningKey>>,
    /// Where context packs are kept (the cache).
    pub packs: PathBuf,
    /// Build caches (`cache = [...]` of a target); `None`: this run builds without them
    /// (`--no-cache`, a reproduction).
    pub caches: Option<crate::cache::Caches>,
    /// The project's directory (canonical), which every cache key holds: another project's
    /// target of the same name never shares a cache with this one's.
    pub project: PathBuf,
    /// What the run's cloud machines may cost at worst, and what they have reserved.
    pub budget: Arc<budget::Budget>,
    /// Context packs this run put in stores, removed when it ends.
    pub shared: std::sync::Mutex<Vec<(Arc<dyn ArtifactStore>, crate::store::Shared)>>,
    /// Build-cache archives this run uploaded and has not committed yet, deleted when it
    /// ends.
    pub cache_uploads: std::sync::Mutex<CacheUploads>,
}

type CacheUploads = Vec<(Arc<dyn ArtifactStore>, crate::store::caches::Reserved)>;

/// What a target's context leaves out.
#[derive(Debug, Clone)]
pub enum Excludes {
    /// Paths never sent to a guest, as (base directory, pattern below it): those inside a
    /// context are left out of it (the artifact directory, say).
    Below(Vec<(PathBuf, String)>),
    /// Exactly these patterns (a reproduction uses the recorded ones).
    Exact(Vec<String>),
}

impl Excludes {
    /// The patterns, relative to `root`, a context there leaves out.
    pub fn of(&self, root: &Path) -> Vec<String> {
        let below = match self {
            Excludes::Exact(exact) => return exact.clone(),
            Excludes::Below(below) => below,
        };
        below
            .iter()
            .filter_map(|(base, pattern)| {
                let rel = base.strip_prefix(root).ok()?;
                Some(if rel.as_os_str().is_empty() {
                    pattern.clone()
                } else {
                    format!("{}/{pattern}", rel.display())
                })
            })
            .collect()
    }
}

/// The fallback SOURCE_DATE_EPOCH when the context is not a git checkout: 1980-01-01, the
/// earliest time every archive format (zip included) can represent.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// SOURCE_DATE_EPOCH: the host's variable if set, else the last commit time of the project
/// when it is a git checkout, else [`DEFAULT_EPOCH`].
pub fn source_date_epoch(root: Option<&Path>) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    let Some(root) = root else {
        return DEFAULT_EPOCH;
    };
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// After the run: every context pack it put in a store is removed again, and every
/// build-cache archive it uploaded but never committed.
pub async fn release_stores(run: &Run) {
    cache::abandon_all(run).await;
    transfer::unshare_all(run).await;
}

impl Run {
    fn log_path(&self, target: &str) -> PathBuf {
        self.logs.join(format!("{target}.log"))
    }
}
