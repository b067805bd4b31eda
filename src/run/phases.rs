//! The pipeline of one target, one function per phase, each returning what the next needs:
//! inputs → (cache hit?) → prepare → boot → sync → provision → collect → publish. Teardown
//! belongs to the caller (the target module), which runs it whatever happened here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Failure, Run};
use crate::artifacts::ArtifactFile;
use crate::config::Target;
use crate::context::{Context, ContextOptions};
use crate::error::{Error, IoContext, Result, joined};
use crate::events::Event;
use crate::guest::{self, Guest};
use crate::logs::LogSink;
use crate::machine::{self, Backend, Lease, MachineSpec, Origin, Prepared, Report};
use crate::manifest::{ArtifactRecord, Build, Manifest};
use crate::store::{ArtifactStore, Publishing};

/// What a build is, known before any machine exists.
pub struct Inputs {
    pub context: Arc<Context>,
    pub context_digest: String,
    pub context_excludes: Vec<String>,
    pub script: Vec<u8>,
    pub script_name: String,
    pub origin: Origin,
    pub backend: Arc<dyn Backend>,
    pub store: Arc<dyn ArtifactStore>,
    pub started_unix: u64,
    pub inputs_digest: String,
}

impl Inputs {
    pub fn build<'a>(&'a self, t: &'a Target, epoch: u64) -> Build<'a> {
        Build {
            target: &t.name,
            builder: &t.builder.name,
            origin: &self.origin,
            context_digest: &self.context_digest,
            context_excludes: &self.context_excludes,
            script_name: &self.script_name,
            script: &self.script,
            globs: &t.artifacts,
            env: &t.env,
            epoch,
            started_unix: self.started_unix,
        }
    }
}

/// Scans and hashes the context (in parallel, with rayon), reads the script, and asks the
/// backend what its machines come from: everything the inputs digest is made of.
pub async fn inputs(run: &Run, t: &Target, log: &LogSink) -> Result<Inputs> {
    let store = match &t.upload {
        Some(url) => run
            .remote
            .get(url)
            .cloned()
            .ok_or_else(|| Error::other(format!("no store for `{url}`")))?,
        None => run.store.clone(),
    };
    let started_unix = crate::host::now_unix();
    let context_excludes = run.exclude_for(&t.context);
    let opts = ContextOptions {
        root: t.context.clone(),
        exclude: context_excludes.clone(),
    };
    let (context, context_digest) = joined(
        "the context scan",
        tokio::task::spawn_blocking(move || {
            let ctx = Context::scan(&opts)?;
            let digest = ctx.digest()?;
            Ok((ctx, digest))
        }),
    )
    .await?;
    log.note(&format!("context digest sha256:{context_digest}"));
    let script =
        std::fs::read(&t.script).ctx(|| format!("cannot read script `{}`", t.script.display()))?;
    let backend = run.machines.backend(&t.builder);
    let origin = backend.origin().await?;
    let mut inputs = Inputs {
        context: Arc::new(context),
        context_digest,
        context_excludes,
        script,
        script_name: t
            .script
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        origin,
        backend,
        store,
        started_unix,
        inputs_digest: String::new(),
    };
    inputs.inputs_digest = inputs.build(t, run.epoch).inputs_digest();
    log.note(&format!("inputs digest sha256:{}", inputs.inputs_digest));
    Ok(inputs)
}

/// A published build with the same inputs, unless forced: its artifacts' locations.
pub async fn cached(
    run: &Run,
    t: &Target,
    i: &Inputs,
    log: &LogSink,
) -> Result<Option<Vec<PathBuf>>> {
    if run.force {
        return Ok(None);
    }
    match i.store.published(&t.name, &i.inputs_digest).await? {
        Some((m, paths)) if m.inputs_digest == i.inputs_digest => {
            log.note("cache hit: a published build has the same inputs");
            Ok(Some(paths))
        }
        _ => Ok(None),
    }
}

/// The backend ready to launch (its image baked on first use), bake steps shown as the
/// target's output.
pub async fn prepare(run: &Run, t: &Target, i: &Inputs) -> Result<Prepared> {
    let (emitter, name) = (run.emitter.clone(), t.name.clone());
    let report = Report::To(Arc::new(move |line| {
        emitter.send(Event::Output {
            target: name.clone(),
            line,
        })
    }));
    i.backend.prepare(&report).await
}

/// A fresh machine, reachable.
pub async fn boot(run: &Run, t: &Target, i: &Inputs, log: &LogSink) -> Result<Lease> {
    let spec = MachineSpec {
        shape: t.shape,
        ..MachineSpec::of(&t.builder, &t.name)
    };
    let lease = machine::lease(i.backend.as_ref(), &spec, &run.cancel).await?;
    log.note(&format!("machine {} is up", lease.machine.describe()));
    Ok(lease)
}

pub async fn sync(run: &Run, guest: &dyn Guest, i: &Inputs, log: &LogSink) -> Result<()> {
    for s in i.context.skipped() {
        log.note(&format!(
            "context: skipped {} `{}`",
            s.kind,
            s.path.display()
        ));
    }
    let sent = guest.sync(i.context.clone(), run.epoch, log).await?;
    log.note(&format!(
        "context: {} files, {} bytes, tar sha256 {}",
        sent.files, sent.file_bytes, sent.tar_sha256
    ));
    Ok(())
}

pub async fn provision(
    run: &Run,
    guest: &dyn Guest,
    t: &Target,
    i: &Inputs,
    log: &LogSink,
) -> Result<(), Failure> {
    let mut vars = vec![
        ("RUNNER_TARGET".to_owned(), t.name.clone()),
        ("RUNNER_OUT".to_owned(), guest::OUT.to_owned()),
        ("SOURCE_DATE_EPOCH".to_owned(), run.epoch.to_string()),
    ];
    vars.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let done = guest
        .provision(&i.script, &vars, run.leak_timeout, log)
        .await?;
    if let Some(left) = &done.leftovers {
        log.note(&format!(
            "the script exited ({}) but left {} process(es) holding its output; stopped \
             waiting after {} (they end with the machine):",
            done.status,
            left.len(),
            humantime::format_duration(run.leak_timeout)
        ));
        for p in left {
            log.note(&format!("  left running: {p}"));
        }
    }
    if !done.status.success() {
        return Err(Failure::Script {
            status: done.status,
        });
    }
    Ok(())
}

/// The artifacts, unpacked into the store's staging directory.
pub struct Collected {
    pub staging: tempfile::TempDir,
    pub files: Vec<ArtifactFile>,
}

pub async fn collect(
    run: &Run,
    guest: &dyn Guest,
    t: &Target,
    i: &Inputs,
    log: &LogSink,
) -> Result<Collected> {
    let staging = i.store.staging(&t.name)?;
    let files = guest
        .collect(&t.artifacts, staging.path(), &run.limits, log)
        .await?;
    Ok(Collected { staging, files })
}

/// The manifest, then the store's publish of files and manifest. `cancel` stops a publish
/// cleanly (Ctrl-C, the deadline): the store removes what it put.
pub async fn publish(
    run: &Run,
    t: &Target,
    i: &Inputs,
    prepared: &Prepared,
    collected: Collected,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Vec<PathBuf>> {
    let build_id = crate::manifest::build_id(&i.inputs_digest, i.started_unix);
    let records = collected
        .files
        .iter()
        .map(|f| ArtifactRecord {
            path: f.path.to_string_lossy().into_owned(),
            size: f.size,
            sha256: f.sha256.clone(),
            uri: i.store.uri(&t.name, &build_id, &f.path),
        })
        .collect();
    let manifest = Manifest::new(&i.build(t, run.epoch), &prepared.base_image, records);
    let total = collected.files.iter().map(|f| f.size).sum::<u64>();
    let how = Publishing {
        cancel,
        sent: transfer_reporter(run, &t.name, total),
    };
    i.store
        .publish(
            &t.name,
            collected.staging,
            &collected.files,
            &manifest,
            &how,
        )
        .await
}

/// Turns "n more bytes stored" into [`Event::Transfer`]s: at most a few a second, and always
/// the last one, so the progress line moves without flooding the event stream.
fn transfer_reporter(run: &Run, target: &str, total: u64) -> Arc<dyn Fn(u64) + Send + Sync> {
    let (emitter, target) = (run.emitter.clone(), target.to_owned());
    let started = Instant::now();
    let state = Mutex::new((0u64, None::<Instant>));
    Arc::new(move |n| {
        let mut st = state.lock().unwrap();
        st.0 += n;
        let due = st.1.is_none_or(|last| last.elapsed().as_millis() >= 250);
        if due || st.0 >= total {
            st.1 = Some(Instant::now());
            emitter.send(Event::Transfer {
                target: target.clone(),
                bytes: st.0,
                total,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    })
}
