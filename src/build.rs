//! `runner build`, `runner list`, `runner check`: the project-level commands.

use std::path::Path;
use std::sync::Arc;

use crate::artifacts::Limits;
use crate::config::{Backend, Builder, Project};
use crate::error::{Error, Result};
use crate::events::Emitter;
use crate::launch::Env;
use crate::orchestrator::{self, Options};
use crate::pipeline::Shared;
use crate::progress::{self, Format};
use std::collections::HashMap;

use crate::store::ArtifactStore;
use crate::store::local::LocalStore;
use crate::store::s3::{self, S3Store, S3Url};

pub struct BuildArgs {
    pub targets: Vec<String>,
    pub all: bool,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub keep_failed: bool,
    pub force: bool,
    /// `s3://bucket/prefix` for every selected target, overriding runner.toml.
    pub upload: Option<String>,
    pub format: Format,
    pub interactive: bool,
}

/// The fallback SOURCE_DATE_EPOCH when the context is not a git checkout: 1980-01-01, the
/// earliest time every archive format (zip included) can represent.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// Builds the selected targets; returns the process exit code (0 only if all succeeded).
pub async fn build(env: &Env, args: BuildArgs) -> Result<i32> {
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
    let shared = Arc::new(Shared {
        env: env.clone(),
        store: Arc::new(LocalStore::new(&project.artifact_dir)),
        remote,
        limits: Limits {
            max_file_bytes: project.limits.max_file.0,
            max_total_bytes: project.limits.max_total.0,
            max_entries: project.limits.max_files,
        },
        emitter,
        keep_failed: args.keep_failed,
        force: args.force,
        epoch: source_date_epoch(&project.root),
        logs: env.dirs.logs().join("builds"),
        // Never send the artifacts (or runner's own files) back into the next build.
        exclude: vec![(project.artifact_dir.clone(), String::new())],
        context_excludes: None,
    });
    let renderer = tokio::spawn(progress::run(rx, args.format, args.interactive));
    let opts = Options {
        jobs: args.jobs.unwrap_or_else(orchestrator::default_jobs),
        keep_going: args.keep_going,
    };
    let results = orchestrator::run(shared, targets, &opts).await;
    let summary = renderer
        .await
        .map_err(|e| Error::other(format!("progress display failed: {e}")))?;
    progress::print_summary(&summary, &mut std::io::stderr());
    Ok(if results.iter().all(|r| r.outcome.ok()) {
        0
    } else {
        1
    })
}

/// An S3 store for `url` with the project's `[store]` settings, checked before use.
pub async fn s3_store(env: &Env, project: &Project, url: &str) -> Result<Arc<dyn ArtifactStore>> {
    let settings = s3::Settings {
        endpoint: project.store.endpoint.clone(),
        region: project.store.region.clone(),
        path_style: project.store.path_style,
    };
    let parsed: S3Url = url.parse().map_err(Error::Other)?;
    let store = S3Store::connect(parsed, &settings, &env.dirs).await;
    store.preflight().await?;
    Ok(Arc::new(store))
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
        None => Ok(Arc::new(LocalStore::new(&project.artifact_dir))),
    }
}

/// `runner artifacts ls`: the newest published build of a target.
pub async fn artifacts_ls(env: &Env, target: &str, upload: Option<&str>) -> Result<i32> {
    let project = Project::load(&env.project)?;
    let store = store_for(env, &project, target, upload).await?;
    let Some(m) = store.latest(target).await? else {
        eprintln!("runner: no published build of `{target}`");
        return Ok(1);
    };
    println!(
        "{} build {} (inputs {}), finished {}",
        m.target,
        crate::manifest::build_id(&m.inputs_digest, m.started_unix),
        &m.inputs_digest[..16],
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.finished_unix)
        )
    );
    for a in &m.artifacts {
        println!("{:>12}  {}  {}  {}", a.size, a.sha256, a.path, a.uri);
    }
    Ok(0)
}

/// `runner artifacts get`: downloads the newest build's artifacts and checks each sha256
/// against its manifest; a mismatching file is removed and the command fails.
pub async fn artifacts_get(
    env: &Env,
    target: &str,
    upload: Option<&str>,
    out: &Path,
) -> Result<i32> {
    let project = Project::load(&env.project)?;
    let store = store_for(env, &project, target, upload).await?;
    let m = store
        .latest(target)
        .await?
        .ok_or_else(|| Error::other(format!("no published build of `{target}`")))?;
    let mut bad = 0;
    for a in &m.artifacts {
        // Manifest paths were checked when published; refuse anything that would escape anyway.
        let rel = Path::new(&a.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::other(format!(
                "manifest lists an unsafe path `{}`",
                a.path
            )));
        }
        let dest = out.join(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::other(format!("cannot create `{}`: {e}", dir.display())))?;
        }
        let got = store.fetch(target, &m, a, &dest).await?;
        if got == a.sha256 {
            println!("ok        {}", dest.display());
        } else {
            bad += 1;
            let _ = std::fs::remove_file(&dest);
            println!(
                "MISMATCH  {} (manifest sha256 {}, downloaded {got})",
                a.path, a.sha256
            );
        }
    }
    Ok(if bad == 0 { 0 } else { 1 })
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

/// `runner list`: targets with their builder and script, then every builder.
pub fn list(project_root: &Path) -> Result<i32> {
    let project = Project::load(project_root)?;
    println!(
        "{:<24} {:<20} {:<32} TIMEOUT",
        "TARGET", "BUILDER", "SCRIPT"
    );
    for t in project.targets.values() {
        let script = t.script.strip_prefix(&project.root).unwrap_or(&t.script);
        println!(
            "{:<24} {:<20} {:<32} {}",
            t.name,
            t.builder.name,
            script.display(),
            humantime::format_duration(t.timeout)
        );
    }
    println!();
    println!(
        "{:<24} {:<8} {:<10} {:<6} {:>5} {:>7}",
        "BUILDER", "BACKEND", "SUITE", "ARCH", "VCPUS", "MEMORY"
    );
    for b in Builder::all(project_root)? {
        match &b.backend {
            Backend::Qemu(q) => println!(
                "{:<24} {:<8} {:<10} {:<6} {:>5} {:>7}",
                b.name,
                "qemu",
                q.suite,
                q.arch.debian(),
                q.vcpus,
                q.memory.to_string()
            ),
            Backend::Ec2(e) => println!(
                "{:<24} {:<8} {:<10} {:<6} {}",
                b.name,
                "ec2",
                "-",
                e.arch.debian(),
                e.instance_types.join(",")
            ),
        }
    }
    Ok(0)
}

/// `runner check`: loads and validates everything, starts nothing.
pub fn check(project_root: &Path) -> Result<i32> {
    let builders = Builder::all(project_root)?;
    let project = Project::load(project_root)?;
    println!(
        "ok: {} target(s), {} builder(s) in {}",
        project.targets.len(),
        builders.len(),
        project_root.display()
    );
    Ok(0)
}
