//! The pipeline of one target, one function per phase, each returning what the next needs:
//! inputs → (cache hit?) → prepare → boot → sync → provision → collect → publish (the build
//! cache's own steps are in `cache.rs`, called between them by the target module). Teardown
//! belongs to the caller (the target module), which runs it whatever happened here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::cache::{Sealed, Slot};
use super::inputs::Inputs;
use super::transfer::Plan;
use super::{Failure, Run};
use crate::artifacts::ArtifactFile;
use crate::config::Target;
use crate::context::Context;
use crate::context::pack::Pack;
use crate::error::{Error, Result, joined};
use crate::events::Event;
use crate::guest::{self, Guest};
use crate::logs::LogSink;
use crate::machine::{self, Lease, MachineSpec, Prepared, Report, Waits};
use crate::manifest::{ArtifactRecord, Manifest, RelPath, Sha256};
use crate::store::{ArtifactStore, Publishing, Records};

/// What the target declares (context, script, machine source), its context packed, and
/// the store it publishes to: everything the inputs digest is made of, and what the later
/// phases need.
pub async fn inputs(
    run: &Run,
    t: &Target,
    store: &Arc<dyn ArtifactStore>,
    log: &LogSink,
) -> Result<Inputs> {
    let started_unix = crate::host::now_unix();
    let declared = super::inputs::declared(run, t).await?;
    log.note(&format!(
        "context digest sha256:{}",
        declared.context_digest
    ));
    let pack = pack_context(run, t, &declared.context, &declared.context_digest, log).await?;
    log.note(&format!("inputs digest sha256:{}", declared.inputs_digest));
    Ok(Inputs {
        declared,
        pack,
        store: store.clone(),
        started_unix,
    })
}

/// The context's pack, made by the first target that needs it and reused by the others
/// (and by later runs while the context is unchanged).
async fn pack_context(
    run: &Run,
    t: &Target,
    ctx: &Arc<Context>,
    digest: &str,
    log: &LogSink,
) -> Result<Pack> {
    let started = std::time::Instant::now();
    let (cache, ctx2, digest2, epoch) =
        (run.packs.clone(), ctx.clone(), digest.to_owned(), run.epoch);
    let pack = joined(
        "packing the context",
        tokio::task::spawn_blocking(move || {
            let p = crate::context::pack::ensure(&cache, &ctx2, &digest2, epoch)?;
            if p.made {
                crate::context::pack::prune(&cache, 8);
            }
            Ok(p)
        }),
    )
    .await?;
    log.note(&format!(
        "context pack {} {} ({} bytes, tar sha256 {})",
        if pack.made { "made in" } else { "reused:" },
        if pack.made {
            format!("{:.1}s", started.elapsed().as_secs_f64())
        } else {
            pack.dir.display().to_string()
        },
        pack.tar_bytes,
        pack.tar_sha256
    ));
    run.emitter.send(Event::Packed {
        target: t.name.clone(),
        digest: digest.to_owned(),
        made: pack.made,
        bytes: pack.tar_bytes,
    });
    Ok(pack)
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
    match i.store.published(&t.name, i.inputs_digest()).await? {
        Some((m, paths)) if &m.inputs_digest == i.inputs_digest() => {
            log.note("cache hit: a published build has the same inputs");
            Ok(Some(paths))
        }
        _ => Ok(None),
    }
}

/// The backend ready to launch (its image baked on first use): each step begun is an
/// `image_step` event, and every line the target's output (its progress line).
pub async fn prepare(run: &Run, t: &Target, i: &Inputs) -> Result<Prepared> {
    let (emitter, name) = (run.emitter.clone(), t.name.clone());
    let began = std::time::Instant::now();
    let report = Report::To(Arc::new(move |step, line| {
        if let Some(step) = step {
            emitter.send(Event::ImageStep {
                target: name.clone(),
                step,
                detail: line.clone(),
                seconds: began.elapsed().as_secs_f64(),
            });
        }
        emitter.send(Event::Output {
            target: name.clone(),
            line,
        })
    }));
    i.declared.backend.prepare(&report).await
}

/// A fresh machine, reachable; `reclaimed`: how many of the target's machines were taken
/// away before this one.
pub async fn boot(
    run: &Run,
    (t, reclaimed): (&Target, u32),
    (i, plan, cache): (&Inputs, &Plan, Option<&Slot>),
    log: &LogSink,
) -> Result<Lease> {
    let spec = MachineSpec {
        reclaimed,
        cache: cache.and_then(Slot::disk),
        shape: t.shape,
        disks: match plan {
            Plan::Attach(d) => vec![d.clone()],
            _ => vec![],
        },
        context_url: match plan {
            Plan::Fetch { url, .. } => Some(url.clone()),
            _ => None,
        },
        console_limit: run.limits.max_console.0,
        waits: waits(run, t, log),
        ..MachineSpec::of(&t.builder, &t.name)
    };
    let lease = machine::lease(i.declared.backend.as_ref(), &spec, &run.cancel).await?;
    log.note(&format!("machine {} is up", lease.machine.describe()));
    if !lease.machine.start.is_empty() {
        log.note(&format!("start: {}", lease.machine.start));
    }
    run.emitter.send(Event::Machine {
        target: t.name.clone(),
        machine: lease.machine.describe(),
        start: lease.machine.start.clone(),
    });
    if !lease.machine.boot_phases.is_empty() {
        log.note(&format!(
            "boot: {}",
            crate::machine::boot::describe(&lease.machine.boot_phases)
        ));
    }
    for p in &lease.machine.boot_phases {
        run.emitter.send(Event::Boot {
            target: t.name.clone(),
            phase: p.phase.clone(),
            seconds: p.seconds,
        });
    }
    Ok(lease)
}

/// A launch that waits says so in the target's log and as a `waiting` event.
fn waits(run: &Run, t: &Target, log: &LogSink) -> Waits {
    let (emitter, target, log) = (run.emitter.clone(), t.name.clone(), log.clone());
    Waits(std::sync::Arc::new(move |why, retry_in| {
        log.note(&format!("waiting: {why} (next try in {retry_in:?})"));
        emitter.send(Event::Waiting {
            target: target.clone(),
            reason: why.to_owned(),
            retry_in_seconds: retry_in.as_secs_f64(),
        });
    }))
}

pub async fn sync(lease: &Lease, i: &Inputs, plan: &Plan, log: &LogSink) -> Result<()> {
    for s in i.declared.context.skipped() {
        log.note(&format!(
            "context: skipped {} `{}`",
            s.kind,
            s.path.display()
        ));
    }
    let how = super::transfer::delivery(plan, i, &lease.machine);
    lease.guest.deliver(&how, log).await?;
    log.note(&format!(
        "context: {} entries in {}",
        i.declared.context.entries().len(),
        crate::guest::SRC
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
        .provision(&i.declared.script, &vars, run.limits.leak_timeout, log)
        .await?;
    if let Some(left) = &done.leftovers {
        log.note(&format!(
            "the script exited ({}) but left {} process(es) holding its output; stopped \
             waiting after {} (they end with the machine):",
            done.status,
            left.count,
            humantime::format_duration(run.limits.leak_timeout)
        ));
        for p in &left.named {
            log.note(&format!("  left running: {p}"));
        }
        if left.count > left.named.len() {
            let more = left.count - left.named.len();
            log.note(&format!("  … and {more} more"));
        }
    }
    if !done.status.success() {
        return Err(Failure::Script {
            status: done.status,
        });
    }
    Ok(())
}

/// The artifacts, unpacked into the store's staging directory, and the build cache's next
/// generation, sealed.
pub struct Collected {
    pub staging: tempfile::TempDir,
    pub files: Vec<ArtifactFile>,
    pub cache: Option<Sealed>,
}

pub async fn collect(
    run: &Run,
    lease: &Lease,
    t: &Target,
    i: &Inputs,
    log: &LogSink,
) -> Result<Collected> {
    let staging = i.store.staging(&t.name)?;
    // Over a network, not a loopback port: compressed in transit where the guest can.
    let remote = !lease.machine.endpoint.host.starts_with("127.");
    let files = lease
        .guest
        .collect(
            &t.artifacts,
            staging.path(),
            &(&run.limits).into(),
            remote,
            log,
        )
        .await?;
    Ok(Collected {
        staging,
        files,
        cache: None,
    })
}

/// The manifest, then the store's publish of files and manifest, then (published) the build
/// cache's commit. `cancel` stops a publish cleanly (Ctrl-C, the deadline): the store
/// removes what it put, and the cache's sealed generation is dropped.
pub async fn publish(
    run: &Run,
    t: &Target,
    i: &Inputs,
    prepared: &Prepared,
    collected: Collected,
    cancel: tokio_util::sync::CancellationToken,
    log: &LogSink,
) -> Result<Vec<PathBuf>> {
    let build_id = crate::manifest::build_id(i.inputs_digest(), i.started_unix);
    let invalid = |field: &str| {
        let field = field.to_owned();
        move |source| Error::InvalidManifest {
            what: format!("the manifest of `{}`", t.name),
            field,
            source,
        }
    };
    let records = collected
        .files
        .iter()
        .map(|f| {
            Ok(ArtifactRecord {
                path: RelPath::new(f.path.to_string_lossy()).map_err(invalid("artifacts.path"))?,
                size: f.size,
                sha256: Sha256::new(f.sha256.clone()).map_err(invalid("artifacts.sha256"))?,
                uri: i.store.uri(&t.name, &build_id, &f.path),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut manifest = Manifest::new(&i.build(t), &prepared.base_image, records)?;
    manifest.cache = collected.cache.as_ref().map(|s| s.record.clone());
    let records = records_of(run, &manifest, &collected.files, log);
    let total = collected.files.iter().map(|f| f.size).sum::<u64>();
    let how = Publishing {
        cancel,
        sent: transfer_reporter(run, &t.name, total),
    };
    let Collected {
        staging,
        files,
        cache,
    } = collected;
    let published = i
        .store
        .publish(&t.name, staging, &files, &manifest, &records, &how)
        .await;
    // A deadline that fired while the publish finished makes the build a failure: it saves
    // no cache either.
    if let Some(sealed) = cache {
        if published.is_ok() && !how.cancel.is_cancelled() {
            super::cache::commit(run, sealed, log).await;
        } else {
            super::cache::discard(run, sealed).await;
        }
    }
    published
}

/// The checksum file, the manifest, and the provenance statement over both and every
/// artifact, signed with the run's key (or unsigned, which the log says).
fn records_of(run: &Run, m: &Manifest, files: &[ArtifactFile], log: &LogSink) -> Records {
    let sha256sums = crate::artifacts::sha256sums(files).into_bytes();
    match &run.signing {
        Some(k) => log.note(&format!("provenance signed by key {}", k.public().keyid())),
        None => log.note(
            "provenance unsigned: no signing key ([signing] key in runner.toml, or \
             RUNNER_SIGNING_KEY)",
        ),
    }
    Records::of(m, sha256sums, run.signing.as_deref())
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
