//! One target, start to finish: [`run_target`] wraps [`run_target_inner`], which runs the
//! phases under the target's deadline and the run's cancellation and returns a typed
//! [`Failure`]; the outer tears the machine down (or keeps it), and turns the outcome into
//! the [`TargetResult`] the summary and the events carry.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::budget::Reservation;
use super::cache::Slot;
use super::failure::fail;
use super::inputs::Inputs;
use super::phases;
use super::phases::Collected;
use super::transfer::Plan;
use super::{Failure, Planned, Run};
use crate::config::Target;
use crate::error::Error;
use crate::events::{Event, Outcome, Phase, TargetResult};
use crate::logs::LogSink;
use crate::machine::{Lease, Prepared};
use crate::store::ArtifactStore;

/// How a target's work ended when it did not fail.
enum Done {
    Built(Vec<PathBuf>),
    Cached(Vec<PathBuf>),
}

/// The phase a target is in, readable while its work runs (the deadline and Ctrl-C look at
/// it to decide whether a publish is in flight), and announced as an event on entry.
struct Tracker<'a> {
    run: &'a Run,
    target: &'a str,
    started: Instant,
    phase: AtomicU8,
}

const PHASES: [Phase; 9] = [
    Phase::Queued,
    Phase::Image,
    Phase::Boot,
    Phase::Sync,
    Phase::Provision,
    Phase::Collect,
    Phase::Cache,
    Phase::Publish,
    Phase::Teardown,
];

impl Tracker<'_> {
    fn enter(&self, phase: Phase) {
        let n = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(n as u8, Ordering::SeqCst);
        self.run.emitter.send(Event::Phase {
            target: self.target.to_owned(),
            phase,
            seconds: self.started.elapsed().as_secs_f64(),
        });
    }

    fn phase(&self) -> Phase {
        PHASES[self.phase.load(Ordering::SeqCst) as usize]
    }
}

/// What outlives the work future: the machine (for the teardown the outer runs) and the
/// context digest (for the result).
#[derive(Default)]
struct Leftover {
    lease: Option<Lease>,
    /// The machine's share of the spend cap, given back once it is gone.
    reservation: Option<Reservation>,
    context_digest: Option<String>,
}

pub async fn run_target(run: Arc<Run>, planned: Planned) -> TargetResult {
    let Planned { target, store } = planned;
    let started = Instant::now();
    let log_path = run.log_path(&target.name);
    crate::logs::rotate(&log_path, crate::logs::KEEP_PER_TARGET);
    let tracker = Tracker {
        run: &run,
        target: &target.name,
        started,
        phase: AtomicU8::new(0),
    };
    let (emitter, name) = (run.emitter.clone(), target.name.clone());
    let sink = LogSink::create(&log_path, run.limits.max_log.0, move |line| {
        emitter.send(Event::Output {
            target: name.clone(),
            line,
        })
    });
    let mut left = Leftover::default();
    let result = match &sink {
        Err(e) => Err(Failure::Error(Error::Io {
            context: format!("cannot create log `{}`", log_path.display()),
            source: std::io::Error::new(e.kind(), e.to_string()),
        })),
        Ok(log) => {
            let job = Job {
                run: &run,
                t: &target,
                store: &store,
                log,
                tracker: &tracker,
            };
            run_target_inner(&job, &mut left).await
        }
    };
    let phase = tracker.phase();
    let note = match left.lease.take() {
        Some(lease) => finish_machine(&run, &tracker, lease, &result, sink.as_ref().ok()).await,
        None => String::new(),
    };
    // A machine kept for inspection still runs: its worst case stays reserved.
    if let Some(r) = left.reservation.take()
        && !note.is_empty()
    {
        r.keep();
    }
    let mut r = TargetResult {
        target: target.name.clone(),
        outcome: Outcome::Succeeded,
        phase,
        seconds: started.elapsed().as_secs_f64(),
        artifacts: vec![],
        log: log_path,
        exit_code: None,
        failure: None,
        error: None,
        context_digest: left.context_digest,
        log_truncated: None,
    };
    let sink = sink.as_ref().ok();
    match result {
        Ok(Done::Built(paths)) => r.artifacts = paths,
        Ok(Done::Cached(paths)) => (r.outcome, r.artifacts) = (Outcome::Cached, paths),
        Err(f) => fail(&mut r, f, sink, &note),
    }
    r.log_truncated = sink.map(LogSink::finish).filter(|n| *n > 0);
    r
}

/// Tears the machine down, or keeps it (`--keep-failed`) and says how to get in.
async fn finish_machine(
    run: &Run,
    tracker: &Tracker<'_>,
    mut lease: Lease,
    result: &Result<Done, Failure>,
    sink: Option<&LogSink>,
) -> String {
    let failed = matches!(result, Err(f) if !matches!(f, Failure::Cancelled));
    if failed && run.keep_failed {
        let note = match lease.ssh_access(&lease.machine.dir) {
            Ok(access) => format!(
                "\n  machine kept: {}  (remove with `runner gc --force`)",
                access.command_line()
            ),
            Err(e) => format!("\n  could not keep the machine: {e}"),
        };
        lease.machine.keep(run.machines.registry());
        return note;
    }
    tracker.enter(Phase::Teardown);
    if let Err(e) = lease.release(false).await
        && let Some(s) = sink
    {
        s.note(&format!("teardown: {e}"));
    }
    String::new()
}

/// What every phase of one target is handed.
struct Job<'a> {
    run: &'a Run,
    t: &'a Target,
    /// Where the target publishes.
    store: &'a Arc<dyn ArtifactStore>,
    log: &'a LogSink,
    tracker: &'a Tracker<'a>,
}

/// The phases under the run's cancellation. A publish in flight is not dropped on Ctrl-C: it
/// saw the same signal, stops and removes what it uploaded (dropped, it would strand a
/// partial build or a dangling multipart upload; a second signal still forces an exit and
/// `runner gc` finds the upload's journal entry).
async fn run_target_inner(job: &Job<'_>, left: &mut Leftover) -> Result<Done, Failure> {
    let work = phases_of(job, left);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = job.run.cancel.cancelled() => {
            if job.tracker.phase() == Phase::Publish {
                (&mut work).await
            } else {
                Err(Failure::Cancelled)
            }
        }
    }
}

async fn phases_of(job: &Job<'_>, left: &mut Leftover) -> Result<Done, Failure> {
    let Job { run, t, log, .. } = *job;
    job.tracker.enter(Phase::Image);
    let inputs = phases::inputs(run, t, job.store, log).await?;
    left.context_digest = Some(inputs.declared.context_digest.clone());
    if let Some(paths) = phases::cached(run, t, &inputs, log).await? {
        return Ok(Done::Cached(paths));
    }
    let prepared = phases::prepare(run, t, &inputs).await?;
    let plan = super::transfer::plan(run, t, &inputs, log).await?;
    // Held (read-locked) until the build ends: its machine's layer is flattened over it.
    let slot = super::cache::slot(run, t, &inputs, log).await?;
    // The deadline covers the machine's life (boot to publish), not a one-time image bake.
    // Ctrl-C reaches a publish through this token too (it is the run token's child).
    let publish_cancel = run.cancel.child_token();
    let with = (&plan, slot.as_ref());
    let machine_life = machine_phases(job, &inputs, &prepared, with, left, &publish_cancel);
    tokio::pin!(machine_life);
    tokio::select! {
        r = &mut machine_life => r.map(Done::Built),
        _ = tokio::time::sleep(t.timeout) => {
            if job.tracker.phase() == Phase::Publish {
                // Dropping a publish would strand what it uploaded: cancel it and let it
                // clean up instead.
                publish_cancel.cancel();
                let _ = (&mut machine_life).await;
            }
            Err(Failure::TimedOut { after: t.timeout })
        }
    }
}

async fn machine_phases(
    job: &Job<'_>,
    inputs: &Inputs,
    prepared: &Prepared,
    with: (&Plan, Option<&Slot>),
    left: &mut Leftover,
    publish_cancel: &CancellationToken,
) -> Result<Vec<PathBuf>, Failure> {
    let Job { run, t, log, .. } = *job;
    let retries = inputs.declared.backend.retries_on_reclaim();
    let mut reclaimed = 0;
    let collected = loop {
        let e = match on_machine(job, inputs, with, left, reclaimed).await {
            Err(Failure::Error(e @ Error::MachineReclaimed { .. })) => e,
            r => break r?,
        };
        let retrying = reclaimed < retries;
        if let Error::MachineReclaimed { machine, why, .. } = &e {
            run.emitter.send(Event::MachineReclaimed {
                target: t.name.clone(),
                machine: machine.clone(),
                reason: why.clone(),
                retrying,
            });
        }
        log.note(&format!(
            "{e}{}",
            if retrying {
                "; starting again on a fresh machine"
            } else {
                ""
            }
        ));
        if !retrying {
            return Err(Failure::Error(e));
        }
        // Nothing of the taken machine is reused: it goes with its record and keys, and
        // its share of the cap shrinks to what it ran.
        if let Some(lease) = left.lease.take()
            && let Err(e) = lease.release(true).await
        {
            log.note(&format!("teardown: {e}"));
        }
        left.reservation = None;
        reclaimed += 1;
    };
    job.tracker.enter(Phase::Publish);
    let published = phases::publish(
        run,
        t,
        inputs,
        prepared,
        collected,
        publish_cancel.clone(),
        log,
    );
    Ok(published.await?)
}

/// One machine's part, boot to collect. A machine taken away meanwhile ends it at once (its
/// backend saw the instance go, whatever the connection still looks like).
async fn on_machine(
    job: &Job<'_>,
    inputs: &Inputs,
    with: (&Plan, Option<&Slot>),
    left: &mut Leftover,
    reclaimed: u32,
) -> Result<Collected, Failure> {
    let Job {
        run,
        t,
        log,
        tracker,
        ..
    } = *job;
    tracker.enter(Phase::Boot);
    let cost = inputs.declared.backend.cost();
    left.reservation = run.budget.reserve(cost, t.timeout)?;
    let (plan, slot) = with;
    let booted = phases::boot(run, (t, reclaimed), (inputs, plan, slot), log).await?;
    let lease = left.lease.insert(booted);
    let (lost, name) = (lease.machine.lost.clone(), lease.machine.describe());
    tokio::select! {
        r = guest_phases(job, lease, inputs, with) => r,
        why = lost.wait() => Err(Failure::Error(Error::MachineReclaimed {
            machine: name,
            phase: tracker.phase().as_str().to_owned(),
            why,
        })),
    }
}

async fn guest_phases(
    job: &Job<'_>,
    lease: &mut Lease,
    inputs: &Inputs,
    (plan, slot): (&Plan, Option<&Slot>),
) -> Result<Collected, Failure> {
    let Job {
        run,
        t,
        log,
        tracker,
        ..
    } = *job;
    tracker.enter(Phase::Sync);
    let synced = phases::sync(lease, inputs, plan, log).await;
    alive(lease, Phase::Sync, synced.map_err(Failure::from)).await?;
    if let Some(slot) = slot {
        let mounted = super::cache::mount(lease, slot, log).await;
        alive(lease, Phase::Sync, mounted.map_err(Failure::from)).await?;
    }
    tracker.enter(Phase::Provision);
    let provisioned = phases::provision(run, lease.guest.as_ref(), t, inputs, log).await;
    alive(lease, Phase::Provision, provisioned).await?;
    tracker.enter(Phase::Collect);
    let collected = phases::collect(run, lease, t, inputs, log).await;
    let mut collected = alive(lease, Phase::Collect, collected.map_err(Failure::from)).await?;
    if let Some(slot) = slot {
        tracker.enter(Phase::Cache);
        let sealed = super::cache::seal(run, lease, slot, log).await;
        collected.cache = Some(alive(lease, Phase::Cache, sealed.map_err(Failure::from)).await?);
    }
    Ok(collected)
}

/// A guest step's failure, told as what it is when the machine itself stopped meanwhile
/// (powered off, panicked, its hypervisor killed): "died during provision", with its console.
async fn alive<T>(lease: &mut Lease, phase: Phase, r: Result<T, Failure>) -> Result<T, Failure> {
    // How long the machine gets to be seen stopped: a lost connection usually means it did;
    // a refused artifact usually does not (but a stream cut short may).
    let wait = match &r {
        Ok(_) | Err(Failure::Cancelled | Failure::TimedOut { .. }) => return r,
        Err(Failure::Error(Error::MachineDied { .. } | Error::MachineReclaimed { .. })) => {
            return r;
        }
        Err(Failure::Script { status }) if *status != crate::guest::ExitStatus::Lost => return r,
        Err(Failure::Error(Error::ArtifactRefused(_))) => Duration::ZERO,
        Err(_) => Duration::from_secs(3),
    };
    if let Some(died) = lease.machine.died(phase.as_str(), wait).await {
        return Err(Failure::Error(died));
    }
    r
}
