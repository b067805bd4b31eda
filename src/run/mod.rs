//! A run: many targets, each in a fresh machine. [`dispatch`] starts targets while slots are
//! free; [`target`] takes one target from start to finish and turns how it ended into a
//! result; [`phases`] is the pipeline itself, one function per phase.

pub mod dispatch;
mod failure;
mod inputs;
mod phases;
mod target;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::artifacts::Limits;
use crate::events::Emitter;
use crate::machine::Machines;
use crate::provenance::keys::SigningKey;
use crate::store::ArtifactStore;

pub use dispatch::Options;
pub use failure::Failure;
pub use transfer::unshare_all;

/// Everything the targets of one run share: passed to every task as one value.
pub struct Run {
    pub machines: Arc<Machines>,
    /// The default store (the local artifact directory).
    pub store: Arc<dyn ArtifactStore>,
    /// Remote stores by `s3://` URL, for targets that upload.
    pub remote: HashMap<String, Arc<dyn ArtifactStore>>,
    pub limits: Limits,
    /// How long a finished script's output may stay open (see `guest::Provisioned`).
    pub leak_timeout: Duration,
    /// Each target log keeps at most this many bytes (its head and its tail).
    pub log_limit: u64,
    /// Each machine's console log keeps at most this many bytes (its head and its tail).
    pub console_limit: u64,
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
    /// Paths (relative to a context root) never sent to the guest, e.g. the artifact dir.
    pub exclude: Vec<(PathBuf, String)>,
    /// Exact context exclude patterns to use instead (a reproduction uses the recorded ones).
    pub context_excludes: Option<Vec<String>>,
    /// Signs every published build's provenance; `None`: published unsigned (and said so).
    pub signing: Option<Arc<SigningKey>>,
    /// Where context packs are kept (the cache).
    pub packs: PathBuf,
    /// Context packs this run put in stores, removed when it ends.
    pub shared: std::sync::Mutex<Vec<(Arc<dyn ArtifactStore>, crate::store::Shared)>>,
}

/// Of `exclude` (base directory, pattern below it), those inside the context `root`, made
/// relative to it: what a build leaves out of its context (the artifact directory, say).
pub fn context_excludes(root: &Path, exclude: &[(PathBuf, String)]) -> Vec<String> {
    exclude
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

impl Run {
    /// The context excludes of a target whose context is `root`.
    fn exclude_for(&self, root: &Path) -> Vec<String> {
        match &self.context_excludes {
            Some(exact) => exact.clone(),
            None => context_excludes(root, &self.exclude),
        }
    }

    fn log_path(&self, target: &str) -> PathBuf {
        self.logs.join(format!("{target}.log"))
    }
}
