//! Runs many targets at once. One dispatcher loop starts targets while slots are free and
//! reacts to whichever comes first: a target finishing or a shutdown signal. Without
//! `--keep-going`, the first failure stops new launches; running targets finish cleanly. A
//! target whose task panics (a bug) becomes a failed result like any other: the loop goes
//! on, and every other target still ends, and tears down, normally.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::{Id, JoinSet};

use super::target::run_target;
use super::{Planned, Run};
use crate::config::Target;
use crate::events::{Event, FailureKind, Outcome, Phase, TargetResult};

pub struct Options {
    /// At most this many targets at once; `None`: each backend's own capacity (QEMU: host
    /// CPUs and memory; EC2: `max_instances`), summed over the backends the targets use.
    pub jobs: Option<usize>,
    pub keep_going: bool,
}

/// Where slots come from: one pool for the run (`-j`), or one per builder.
struct Slots {
    total: usize,
    per_builder: Option<HashMap<PathBuf, usize>>,
    busy: HashMap<PathBuf, usize>,
}

impl Slots {
    fn new(run: &Run, targets: &[Planned], jobs: Option<usize>) -> Slots {
        if let Some(j) = jobs {
            return Slots {
                total: j.max(1),
                per_builder: None,
                busy: HashMap::new(),
            };
        }
        let mut per: HashMap<PathBuf, usize> = HashMap::new();
        for t in targets.iter().map(|p| &p.target) {
            per.entry(t.builder.path.clone())
                .or_insert_with(|| run.machines.backend(&t.builder).capacity().max(1));
        }
        Slots {
            total: per.values().sum::<usize>().max(1),
            per_builder: Some(per),
            busy: HashMap::new(),
        }
    }

    fn free_for(&self, t: &Target, running: usize) -> bool {
        running < self.total
            && self.per_builder.as_ref().is_none_or(|per| {
                self.busy.get(&t.builder.path).copied().unwrap_or(0)
                    < per.get(&t.builder.path).copied().unwrap_or(1)
            })
    }

    fn take(&mut self, t: &Target) {
        *self.busy.entry(t.builder.path.clone()).or_default() += 1;
    }

    fn give_back(&mut self, builder: &PathBuf) {
        if let Some(n) = self.busy.get_mut(builder) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Runs `targets`; returns one result per target, in the order given.
pub async fn run(run: Arc<Run>, targets: Vec<Planned>, opts: &Options) -> Vec<TargetResult> {
    let started = Instant::now();
    let mut slots = Slots::new(&run, &targets, opts.jobs);
    run.emitter.send(Event::RunStarted {
        targets: targets.iter().map(|p| p.target.name.clone()).collect(),
        jobs: slots.total,
    });
    let mut results: Vec<Option<TargetResult>> = vec![None; targets.len()];
    let mut pending: VecDeque<(usize, Planned)> = targets.into_iter().enumerate().collect();
    let mut running = JoinSet::new();
    // Which target each task is, for a task that never returns its result (a panic).
    let mut tasks: HashMap<Id, (usize, String, PathBuf)> = HashMap::new();
    let mut stop_launching = false;
    let token = run.cancel.clone();

    loop {
        while !stop_launching && !token.is_cancelled() {
            // The first pending target whose builder has a free slot: FIFO, but a target
            // of a full builder does not hold up the others.
            let Some(pos) = pending
                .iter()
                .position(|(_, p)| slots.free_for(&p.target, running.len()))
            else {
                break;
            };
            let (i, p) = pending.remove(pos).expect("position is in range");
            slots.take(&p.target);
            let meta = (i, p.target.name.clone(), p.target.builder.path.clone());
            let handle = running.spawn(run_target(run.clone(), p));
            tasks.insert(handle.id(), meta);
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                let (i, r) = match joined {
                    Ok((id, r)) => (tasks.remove(&id).map_or(0, |m| {
                        slots.give_back(&m.2);
                        m.0
                    }), r),
                    Err(e) => {
                        let (i, name, builder) = tasks.remove(&e.id()).expect("a task of ours");
                        slots.give_back(&builder);
                        (i, panicked(&run, &name, &e))
                    }
                };
                if r.outcome == Outcome::Failed && !opts.keep_going {
                    stop_launching = true;
                }
                run.emitter.send(Event::Finished(r.clone()));
                results[i] = Some(r);
            }
            // Running targets see the same token and tear down on their own; the loop only
            // has to stop launching and wait for them.
            _ = token.cancelled(), if !stop_launching => stop_launching = true,
        }
    }
    for (i, p) in pending {
        let r = not_started(&run, &p.target, token.is_cancelled());
        run.emitter.send(Event::Finished(r.clone()));
        results[i] = Some(r);
    }
    let results: Vec<TargetResult> = results
        .into_iter()
        .map(|r| r.expect("every target has a result"))
        .collect();
    finished(&run, &results, started);
    results
}

fn finished(run: &Run, results: &[TargetResult], started: Instant) {
    let count = |o| results.iter().filter(|r| r.outcome == o).count();
    run.emitter.send(Event::RunFinished {
        succeeded: count(Outcome::Succeeded),
        cached: count(Outcome::Cached),
        failed: count(Outcome::Failed),
        cancelled: count(Outcome::Cancelled),
        skipped: count(Outcome::Skipped),
        seconds: started.elapsed().as_secs_f64(),
    });
}

/// A target whose task panicked. Its machine was torn down by its drop guard as the task
/// unwound (cloud teardowns on threads the run joins before exiting).
fn panicked(run: &Run, name: &str, e: &tokio::task::JoinError) -> TargetResult {
    let why = e.to_string();
    let log = run.log_path(name);
    TargetResult {
        target: name.to_owned(),
        outcome: Outcome::Failed,
        phase: Phase::Queued,
        seconds: 0.0,
        artifacts: vec![],
        exit_code: None,
        failure: Some(FailureKind::Panic),
        error: Some(format!(
            "{name} failed: runner panicked ({why}); its machine was torn down; log: {}",
            log.display()
        )),
        log,
        context_digest: None,
        log_truncated: None,
    }
}

fn not_started(run: &Run, t: &Target, cancelled: bool) -> TargetResult {
    let (outcome, why) = if cancelled {
        (Outcome::Cancelled, "cancelled".to_owned())
    } else {
        (
            Outcome::Skipped,
            "an earlier target failed (use --keep-going)".to_owned(),
        )
    };
    TargetResult {
        target: t.name.clone(),
        outcome,
        phase: Phase::Queued,
        seconds: 0.0,
        artifacts: vec![],
        log: run.log_path(&t.name),
        exit_code: None,
        failure: cancelled.then_some(FailureKind::Cancelled),
        error: Some(format!("{} not started: {why}", t.name)),
        context_digest: None,
        log_truncated: None,
    }
}
