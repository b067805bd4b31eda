//! One target, start to finish: image → boot → sync → provision → collect → publish, then
//! teardown whatever happened. The target's deadline covers everything up to publishing;
//! Ctrl-C and the deadline both end in the same teardown path. The pipeline sees machines
//! only through `launch` and the `Backend` trait.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::artifacts::Limits;
use crate::config::Target;
use crate::context::{Context, ContextOptions};
use crate::error::{Error, IoContext, Result};
use crate::events::{Emitter, Event, Outcome, Phase, TargetResult};
use crate::guest;
use crate::launch::{self, Env, Lease};
use crate::logs::{LogSink, tail};
use crate::manifest::{self, ArtifactRecord, BuilderRecord, Inputs, Manifest, ScriptRecord};
use crate::store::{ArtifactStore, Publishing};

/// What every target of a run shares.
pub struct Shared {
    pub env: Env,
    /// The default store (the local artifact directory).
    pub store: Arc<dyn ArtifactStore>,
    /// Remote stores by `s3://` URL, for targets that upload.
    pub remote: std::collections::HashMap<String, Arc<dyn ArtifactStore>>,
    pub limits: Limits,
    pub emitter: Emitter,
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
}

/// Progress of one target, readable after its work future is gone.
struct Tracker<'a> {
    target: &'a str,
    started: Instant,
    emitter: &'a Emitter,
    phase: Mutex<Phase>,
    exit_code: Mutex<Option<i32>>,
    context_digest: Mutex<Option<String>>,
}

impl Tracker<'_> {
    fn enter(&self, phase: Phase) {
        *self.phase.lock().unwrap() = phase;
        self.emitter.send(Event::Phase {
            target: self.target.to_owned(),
            phase,
            seconds: self.started.elapsed().as_secs_f64(),
        });
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap()
    }
}

pub async fn run_target(shared: Arc<Shared>, target: Target) -> TargetResult {
    let started = Instant::now();
    let log_path = shared.logs.join(format!("{}.log", target.name));
    let _ = std::fs::remove_file(&log_path);
    let tracker = Tracker {
        target: &target.name,
        started,
        emitter: &shared.emitter,
        phase: Mutex::new(Phase::Queued),
        exit_code: Mutex::new(None),
        context_digest: Mutex::new(None),
    };
    let emitter = shared.emitter.clone();
    let name = target.name.clone();
    let sink = LogSink::create(&log_path, move |line| {
        emitter.send(Event::Output {
            target: name.clone(),
            line,
        })
    });

    let mut lease: Option<Lease> = None;
    let result = match &sink {
        Err(e) => Err(Error::other(format!(
            "cannot create log `{}`: {e}",
            log_path.display()
        ))),
        Ok(sink) => {
            let work = stages(&shared, &target, sink, &tracker, &mut lease);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r,
                _ = shared.env.shutdown.token.cancelled() => {
                    if tracker.phase() == Phase::Publish {
                        // The publish saw the same signal: it stops and removes what it
                        // uploaded. Dropped instead, it would strand a partial build or a
                        // dangling multipart upload. (A second signal still forces an exit;
                        // `runner gc` then finds the upload's journal entry.)
                        (&mut work).await
                    } else {
                        Err(Error::Cancelled)
                    }
                }
            }
        }
    };
    let phase = tracker.phase();

    let mut note = String::new();
    if let Some(mut lease) = lease {
        if result.is_err() && shared.keep_failed && !matches!(result, Err(Error::Cancelled)) {
            note = keep(&mut lease, &shared.env.dirs.machines());
            lease.machine.keep();
        } else {
            tracker.enter(Phase::Teardown);
            if let Err(e) = lease.release(false).await
                && let Ok(s) = &sink
            {
                s.note(&format!("teardown: {e}"));
            }
        }
    }

    let exit_code = *tracker.exit_code.lock().unwrap();
    let (outcome, artifacts, error) = match result {
        Ok(Done::Built(paths)) => (Outcome::Succeeded, paths, None),
        Ok(Done::Cached(paths)) => (Outcome::Cached, paths, None),
        Err(Error::Cancelled) => (
            Outcome::Cancelled,
            vec![],
            Some(format!("{} cancelled in {}", target.name, phase.as_str())),
        ),
        Err(e) => {
            if let Ok(s) = &sink {
                s.note(&format!(
                    "failed in {}: {}",
                    phase.as_str(),
                    crate::error::chain(&e)
                ));
            }
            (
                Outcome::Failed,
                vec![],
                Some(describe_failure(&target.name, phase, &e, exit_code, &log_path) + &note),
            )
        }
    };
    TargetResult {
        target: target.name.clone(),
        outcome,
        phase,
        seconds: started.elapsed().as_secs_f64(),
        artifacts,
        log: log_path,
        exit_code,
        error,
        context_digest: tracker.context_digest.lock().unwrap().take(),
    }
}

/// How a target's work ended when it did not fail.
enum Done {
    Built(Vec<PathBuf>),
    Cached(Vec<PathBuf>),
}

async fn stages(
    sh: &Shared,
    t: &Target,
    sink: &LogSink,
    tr: &Tracker<'_>,
    lease_slot: &mut Option<Lease>,
) -> Result<Done> {
    let started_unix = crate::machine::state::now_unix();
    let store = match &t.upload {
        Some(url) => sh
            .remote
            .get(url)
            .ok_or_else(|| Error::other(format!("no store for `{url}`")))?,
        None => &sh.store,
    };
    tr.enter(Phase::Image);
    // The inputs are known before any machine exists: scan and hash the context (in
    // parallel, with rayon), hash the script, and skip the build if they were built before.
    let context_excludes = sh
        .context_excludes
        .clone()
        .unwrap_or_else(|| sh.exclude_for(&t.context));
    let opts = ContextOptions {
        root: t.context.clone(),
        exclude: context_excludes.clone(),
    };
    let (ctx, context_digest) = tokio::task::spawn_blocking(move || {
        let ctx = Context::scan(&opts)?;
        let digest = ctx.digest()?;
        Ok::<_, Error>((ctx, digest))
    })
    .await
    .map_err(|e| Error::other(format!("context scan panicked: {e}")))??;
    sink.note(&format!("context digest sha256:{context_digest}"));
    *tr.context_digest.lock().unwrap() = Some(context_digest.clone());
    let script =
        std::fs::read(&t.script).ctx(|| format!("cannot read script `{}`", t.script.display()))?;
    let script_sha256 = manifest::sha256_hex(&script);
    let recipe = launch::origin(&sh.env, &t.builder).await?;
    let recipe_digest = recipe.digest();
    let inputs_digest = Inputs {
        recipe_digest: &recipe_digest,
        context_digest: &context_digest,
        script_sha256: &script_sha256,
        env: &t.env,
        epoch: sh.epoch,
        globs: &t.artifacts,
    }
    .digest();
    sink.note(&format!("inputs digest sha256:{inputs_digest}"));
    if !sh.force
        && let Some((m, paths)) = store.published(&t.name, &inputs_digest).await
        && m.inputs_digest == inputs_digest
    {
        sink.note("cache hit: a published build has the same inputs");
        return Ok(Done::Cached(paths));
    }

    let mut env = sh.env.clone();
    let (emitter, name) = (sh.emitter.clone(), t.name.clone());
    env.bake.report = crate::image::bake::Report::To(Arc::new(move |line| {
        emitter.send(Event::Output {
            target: name.clone(),
            line,
        })
    }));
    let (backend, base_image) = launch::backend(&env, &t.builder).await?;

    // The deadline covers the machine's life (boot to publish), not a one-time image bake.
    // Ctrl-C reaches a publish through this token too (it is the shutdown token's child).
    let publish_cancel = sh.env.shutdown.token.child_token();
    let timed = async {
        tr.enter(Phase::Boot);
        let mut spec = launch::spec(&t.builder, &t.name);
        spec.vcpus = t.vcpus.unwrap_or(spec.vcpus);
        spec.memory_mib = t.memory.map_or(spec.memory_mib, |m| m.mib());
        let lease = lease_slot.insert(launch::lease(&sh.env, backend.as_ref(), &spec).await?);
        sink.note(&format!("machine {} is up", lease.machine.describe()));

        tr.enter(Phase::Sync);
        for s in ctx.skipped() {
            sink.note(&format!(
                "context: skipped {} `{}`",
                s.kind,
                s.path.display()
            ));
        }
        let sent = guest::sync_context(&lease.session, Arc::new(ctx), sh.epoch, sink).await?;
        sink.note(&format!(
            "context: {} files, {} bytes, tar sha256 {}",
            sent.files, sent.file_bytes, sent.tar_sha256
        ));

        tr.enter(Phase::Provision);
        let mut vars = vec![
            ("RUNNER_TARGET".to_owned(), t.name.clone()),
            ("RUNNER_OUT".to_owned(), guest::OUT.to_owned()),
            ("SOURCE_DATE_EPOCH".to_owned(), sh.epoch.to_string()),
        ];
        vars.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let status = guest::run_script(&lease.session, &script, &vars, sink).await?;
        if !status.success() {
            *tr.exit_code.lock().unwrap() = Some(status.code());
            return Err(Error::other(format!("provision script {status}")));
        }

        tr.enter(Phase::Collect);
        let staging = store.staging(&t.name)?;
        let files = guest::collect(
            &lease.session,
            &t.artifacts,
            staging.path(),
            &sh.limits,
            sink,
        )
        .await?;

        tr.enter(Phase::Publish);
        let build = manifest::build_id(&inputs_digest, started_unix);
        let manifest = Manifest {
            schema: manifest::SCHEMA,
            runner_version: env!("CARGO_PKG_VERSION").to_owned(),
            target: t.name.clone(),
            builder: BuilderRecord {
                name: t.builder.name.clone(),
                recipe,
                recipe_digest,
            },
            base_image_sha256: base_image,
            context_digest,
            context_excludes,
            script: ScriptRecord {
                name: t
                    .script
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                sha256: script_sha256,
                content: String::from_utf8_lossy(&script).into_owned(),
            },
            artifact_globs: t.artifacts.clone(),
            env: t.env.clone(),
            source_date_epoch: sh.epoch,
            inputs_digest,
            started_unix,
            finished_unix: crate::machine::state::now_unix(),
            artifacts: files
                .iter()
                .map(|f| ArtifactRecord {
                    path: f.path.to_string_lossy().into_owned(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    uri: store.uri(&t.name, &build, &f.path),
                })
                .collect(),
        };
        let total = files.iter().map(|f| f.size).sum::<u64>();
        let how = Publishing {
            cancel: publish_cancel.clone(),
            sent: transfer_reporter(sh.emitter.clone(), t.name.clone(), total),
        };
        store
            .publish(&t.name, staging, &files, &manifest, &how)
            .await
            .map(Done::Built)
    };
    tokio::pin!(timed);
    tokio::select! {
        r = &mut timed => r,
        _ = tokio::time::sleep(t.timeout) => {
            if tr.phase() == Phase::Publish {
                // Dropping a publish would strand what it uploaded: cancel it and let it
                // clean up instead.
                publish_cancel.cancel();
                let _ = (&mut timed).await;
            }
            Err(Error::other(format!(
                "timed out after {}",
                humantime::format_duration(t.timeout)
            )))
        }
    }
}

/// Turns "n more bytes stored" into [`Event::Transfer`]s: at most a few a second, and always
/// the last one, so the progress line moves without flooding the event stream.
fn transfer_reporter(
    emitter: Emitter,
    target: String,
    total: u64,
) -> Arc<dyn Fn(u64) + Send + Sync> {
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

impl Shared {
    /// Excludes that fall inside this context root, made relative to it.
    fn exclude_for(&self, root: &Path) -> Vec<String> {
        self.exclude
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

/// `<target> failed in <phase>: <what> (exit code N); log: <path>` and the log's last lines.
fn describe_failure(
    target: &str,
    phase: Phase,
    e: &Error,
    code: Option<i32>,
    log: &Path,
) -> String {
    let mut s = format!("{target} failed in {}: {e}", phase.as_str());
    if let Some(c) = code {
        s.push_str(&format!(" (exit code {c})"));
    }
    s.push_str(&format!("; log: {}", log.display()));
    let last = tail(log, 10);
    if !last.trim().is_empty() {
        s.push_str("\n  last lines of the log:");
        for l in last.lines() {
            s.push_str("\n    ");
            s.push_str(&crate::progress::sanitize(l));
        }
    }
    s
}

/// Leaves a failed machine running and says how to get in; `runner gc` removes it later.
fn keep(lease: &mut Lease, machines: &Path) -> String {
    let dir = machines.join(&lease.machine.id);
    let ep = &lease.machine.endpoint;
    let key = dir.join("id_ed25519");
    let known = dir.join("known_hosts");
    let written = lease
        .keys
        .client_private_openssh()
        .and_then(|k| crate::machine::qemu::write_private(&key, k.as_bytes()))
        .and_then(|_| {
            let line = format!(
                "[{}]:{} {}\n",
                ep.host,
                ep.port,
                crate::keys::openssh_public(lease.keys.host_public())
            );
            crate::machine::qemu::write_private(&known, line.as_bytes())
        })
        .and_then(|_| crate::machine::state::mark_kept(&dir));
    match written {
        Ok(()) => format!(
            "\n  machine kept: ssh -i {} -o UserKnownHostsFile={} -p {} {}@{}  (remove with `runner gc --force`)",
            key.display(),
            known.display(),
            ep.port,
            ep.user,
            ep.host
        ),
        Err(e) => format!("\n  could not keep the machine: {e}"),
    }
}
