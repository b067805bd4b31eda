//! `runner build`: the selected targets of runner.toml, each in a fresh machine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::Env;
use crate::artifacts::Limits;
use crate::config::{Project, S3Url};
use crate::error::{Error, Result};
use crate::events::Emitter;
use crate::progress::{self, Format};
use crate::run::{self, Options, Run};
use crate::store::ArtifactStore;
use crate::store::local::LocalStore;

pub struct Args {
    pub targets: Vec<String>,
    pub all: bool,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub keep_failed: bool,
    pub force: bool,
    /// `s3://bucket/prefix` for every selected target, overriding runner.toml.
    pub upload: Option<String>,
}

/// The fallback SOURCE_DATE_EPOCH when the context is not a git checkout: 1980-01-01, the
/// earliest time every archive format (zip included) can represent.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// Builds the selected targets; returns the process exit code (0 only if all succeeded).
pub async fn build(env: &Env, args: Args) -> Result<i32> {
    let project = Project::load(&env.project)?;
    let mut targets: Vec<_> = project
        .select(&args.targets, args.all)
        .map_err(Error::Other)?
        .into_iter()
        .cloned()
        .collect();
    if let Some(u) = &args.upload {
        u.parse::<S3Url>().map_err(Error::Other)?;
    }
    // Resolve each target's destination: --upload, else the target's, else [store].
    let mut remote: HashMap<String, Arc<dyn ArtifactStore>> = HashMap::new();
    for t in &mut targets {
        t.upload = args
            .upload
            .clone()
            .or(t.upload.take())
            .or(project.store.upload.clone());
        if let Some(url) = &t.upload
            && !remote.contains_key(url)
        {
            remote.insert(url.clone(), s3_store(env, &project, url).await?);
        }
    }
    if targets.is_empty() {
        return Err(Error::other(format!(
            "no targets defined in {}",
            env.project.join("runner.toml").display()
        )));
    }
    let (emitter, rx) = Emitter::channel();
    let run = Arc::new(Run {
        machines: env.machines.clone(),
        store: Arc::new(
            LocalStore::new(&project.artifact_dir).trusting(super::key::trust(&project)?),
        ),
        remote,
        limits: Limits {
            max_file_bytes: project.limits.max_file.0,
            max_total_bytes: project.limits.max_total.0,
            max_entries: project.limits.max_files,
        },
        leak_timeout: project.limits.leak_timeout,
        log_limit: project.limits.max_log.0,
        console_limit: project.limits.max_console.0,
        emitter,
        cancel: env.shutdown.token.clone(),
        keep_failed: args.keep_failed,
        force: args.force,
        epoch: source_date_epoch(&project.root),
        logs: env.dirs.logs().join("builds"),
        // Never send the artifacts (or runner's own files) back into the next build.
        exclude: vec![(project.artifact_dir.clone(), String::new())],
        context_excludes: None,
        signing: super::key::signing_key(Some(&project))?,
        packs: env.dirs.cache.clone(),
        shared: Default::default(),
    });
    let format = match (env.quiet, env.format) {
        (true, Format::Human) => Format::Quiet,
        (_, f) => f,
    };
    let renderer = tokio::spawn(progress::run(rx, format, env.interactive));
    let opts = Options {
        jobs: args.jobs,
        keep_going: args.keep_going,
    };
    let results = run::dispatch::run(run.clone(), targets, &opts).await;
    run::unshare_all(&run).await;
    // The renderer ends when the last emitter (the run's) is gone.
    drop(run);
    let summary = renderer.await.map_err(|source| Error::Task {
        what: "the progress display",
        source,
    })?;
    let ok = results.iter().all(|r| r.outcome.ok());
    if !(env.quiet && ok) {
        progress::print_summary(&summary, &mut std::io::stderr());
    }
    Ok(super::Exit::of(ok))
}

/// An S3 store for `url` with the project's `[store]` settings, checked before use.
pub async fn s3_store(env: &Env, project: &Project, url: &str) -> Result<Arc<dyn ArtifactStore>> {
    let parsed: S3Url = url.parse().map_err(Error::Other)?;
    let trust = super::key::trust(project)?;
    crate::store::remote(&parsed, &project.store, &env.dirs, trust).await
}

/// Where `target` publishes: `upload` (a flag), else the target's own, else `[store]`, else
/// the local artifact directory.
pub async fn store_for(
    env: &Env,
    project: &Project,
    target: &str,
    upload: Option<&str>,
) -> Result<Arc<dyn ArtifactStore>> {
    let t = project
        .targets
        .get(target)
        .ok_or_else(|| Error::other(format!("no target `{target}` in runner.toml")))?;
    match upload
        .map(str::to_owned)
        .or(t.upload.clone())
        .or(project.store.upload.clone())
    {
        Some(url) => s3_store(env, project, &url).await,
        None => Ok(Arc::new(
            LocalStore::new(&project.artifact_dir).trusting(super::key::trust(project)?),
        )),
    }
}

/// SOURCE_DATE_EPOCH: the host's variable if set, else the last commit time of the project
/// when it is a git checkout, else [`DEFAULT_EPOCH`].
pub fn source_date_epoch(root: &Path) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
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
