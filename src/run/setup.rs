//! Building a run: the one constructor `build`, `reproduce` and the tests share, and the
//! targets it runs, each with the store it publishes to resolved before anything starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::Run;
use super::budget::Budget;
use crate::config::{Project, S3Url, Target};
use crate::error::{Error, Result};
use crate::events::{Emitter, Event};
use crate::machine::Machines;
use crate::paths::Dirs;
use crate::provenance::keyring;
use crate::store::local::LocalStore;
use crate::store::{self, ArtifactStore, Trust};

/// The host side of a run: where machines come from, runner's directories, and the token
/// the first Ctrl-C cancels.
pub struct Host<'a> {
    pub machines: Arc<Machines>,
    pub dirs: &'a Dirs,
    pub cancel: CancellationToken,
}

/// What the command asks of the run besides the project's own settings.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Leave a failed target's machine running for inspection.
    pub keep_failed: bool,
    /// Build even when a published build has the same inputs.
    pub force: bool,
    /// Where targets that upload nowhere publish; default: the project's artifact directory.
    pub local_store: Option<PathBuf>,
    /// Where target logs go; default: runner's log directory.
    pub logs: Option<PathBuf>,
    /// SOURCE_DATE_EPOCH; default: the project's ([`super::source_date_epoch`]).
    pub epoch: Option<u64>,
    /// The exact context excludes to use (a reproduction's recorded ones) instead of the
    /// project's artifact directory.
    pub context_excludes: Option<Vec<String>>,
    /// The run's spend cap in dollars (`--max-cost`), over the project's `max_cost`.
    pub max_cost: Option<f64>,
    /// Build without build caches (`--no-cache`; always, for a reproduction).
    pub no_cache: bool,
}

/// A target as a run builds it: its configuration and the store it publishes to.
pub struct Planned {
    pub target: Target,
    pub store: Arc<dyn ArtifactStore>,
}

impl Run {
    /// A run of `project` (or of no project: a reproduction elsewhere, a test) under `opts`:
    /// the project's limits, signing key and trust, else the defaults. Returns the run and
    /// the receiving end of its events.
    pub fn new(
        host: &Host<'_>,
        project: Option<&Project>,
        opts: RunOptions,
    ) -> Result<(Run, UnboundedReceiver<Event>)> {
        let local_dir = opts
            .local_store
            .or_else(|| Some(project?.artifact_dir.clone()))
            .ok_or_else(|| {
                Error::other("a run outside a project needs a directory to publish to")
            })?;
        let trust = Trust(keyring::trusted_key(project)?);
        let (emitter, rx) = Emitter::channel();
        let limits = project.map(|p| p.limits).unwrap_or_default();
        let project_dir = project
            .map(|p| std::fs::canonicalize(&p.root).unwrap_or_else(|_| p.root.clone()))
            .unwrap_or_else(|| local_dir.clone());
        let budget = Budget::new(opts.max_cost.or(limits.max_cost), limits.max_instance_hours);
        let run = Run {
            machines: host.machines.clone(),
            local: Arc::new(LocalStore::new(&local_dir).trusting(trust)),
            limits,
            budget: Arc::new(budget),
            emitter,
            cancel: host.cancel.clone(),
            keep_failed: opts.keep_failed,
            force: opts.force,
            epoch: opts
                .epoch
                .unwrap_or_else(|| super::source_date_epoch(project.map(|p| p.root.as_path()))),
            logs: opts.logs.unwrap_or_else(|| host.dirs.logs().join("builds")),
            // Never send the artifacts (or runner's own files) back into the next build.
            excludes: match opts.context_excludes {
                Some(exact) => super::Excludes::Exact(exact),
                None => super::Excludes::Below(vec![(local_dir, String::new())]),
            },
            signing: keyring::signing_key(project)?,
            packs: host.dirs.cache.clone(),
            caches: (!opts.no_cache).then(|| crate::cache::Caches::new(&host.dirs.cache)),
            project: project_dir,
            shared: Default::default(),
            cache_uploads: Default::default(),
        };
        Ok((run, rx))
    }

    /// `targets`, each with its store: `upload` (a flag) for all of them, else the target's
    /// own, else `[store]`, else the local one. Every remote store is connected and checked
    /// once, before any target starts.
    pub async fn plan(
        &self,
        host: &Host<'_>,
        project: &Project,
        targets: Vec<Target>,
        upload: Option<&S3Url>,
    ) -> Result<Vec<Planned>> {
        let mut remote: HashMap<String, Arc<dyn ArtifactStore>> = HashMap::new();
        let mut planned = Vec::with_capacity(targets.len());
        for target in targets {
            let cost = self.machines.backend(&target.builder).cost();
            self.budget.priced(&target, cost)?;
            let store = match destination(project, &target, upload) {
                None => self.local.clone(),
                Some(url) => match remote.get(&url.to_string()) {
                    Some(s) => s.clone(),
                    None => {
                        let s = remote_store(host, project, url).await?;
                        remote.insert(url.to_string(), s.clone());
                        s
                    }
                },
            };
            planned.push(Planned { target, store });
        }
        Ok(planned)
    }

    /// `targets` publishing to the run's local store.
    pub fn local(&self, targets: Vec<Target>) -> Vec<Planned> {
        targets
            .into_iter()
            .map(|target| Planned {
                target,
                store: self.local.clone(),
            })
            .collect()
    }
}

/// Where `t` publishes when it uploads: `upload`, else its own, else `[store] upload`.
pub fn destination<'a>(
    project: &'a Project,
    t: &'a Target,
    upload: Option<&'a S3Url>,
) -> Option<&'a S3Url> {
    upload
        .or(t.upload.as_ref())
        .or(project.store.upload.as_ref())
}

/// An S3 store at `url` with the project's `[store]` settings and trust, checked before use.
pub async fn remote_store(
    host: &Host<'_>,
    project: &Project,
    url: &S3Url,
) -> Result<Arc<dyn ArtifactStore>> {
    let trust = Trust(keyring::trusted_key(Some(project))?);
    store::remote(url, &project.store, host.dirs, trust).await
}

/// The store `why`, `artifacts` and friends read `target`'s builds from: as [`Run::plan`]
/// would resolve it.
pub async fn store_of(
    host: &Host<'_>,
    project: &Project,
    t: &Target,
    upload: Option<&S3Url>,
) -> Result<Arc<dyn ArtifactStore>> {
    match destination(project, t, upload) {
        Some(url) => remote_store(host, project, url).await,
        None => {
            let trust = Trust(keyring::trusted_key(Some(project))?);
            Ok(Arc::new(
                LocalStore::new(&project.artifact_dir).trusting(trust),
            ))
        }
    }
}
