//! Runs many targets at once. One dispatcher loop starts targets while slots are free and
//! reacts to whichever comes first: a target finishing or a shutdown signal. Without
//! `--keep-going`, the first failure stops new launches; running targets finish cleanly.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::config::Target;
use crate::events::{Event, Outcome, Phase, TargetResult};
use crate::pipeline::{Shared, run_target};

pub struct Options {
    pub jobs: usize,
    pub keep_going: bool,
}

/// A default `-j`: one machine per core, but no more than memory allows at ~1.5 GiB each
/// (guest memory plus QEMU's own), and at least one.
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(2 << 20);
    let by_memory = (mem_kib / (1536 << 10)) as usize;
    cpus.min(by_memory).max(1)
}

/// Runs `targets`; returns one result per target, in the order given.
pub async fn run(shared: Arc<Shared>, targets: Vec<Target>, opts: &Options) -> Vec<TargetResult> {
    let started = Instant::now();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    shared.emitter.send(Event::RunStarted {
        targets: names.clone(),
        jobs: opts.jobs,
    });

    let mut results: Vec<Option<TargetResult>> = vec![None; targets.len()];
    let mut pending = targets.into_iter().enumerate();
    let mut running = JoinSet::new();
    let mut stop_launching = false;
    let token = shared.env.shutdown.token.clone();

    loop {
        while !stop_launching && !token.is_cancelled() && running.len() < opts.jobs.max(1) {
            let Some((i, t)) = pending.next() else { break };
            let sh = shared.clone();
            running.spawn(async move { (i, run_target(sh, t).await) });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => {
                let (i, r) = match joined {
                    Ok(x) => x,
                    // A panicking target is a bug; its machine's Drop guard has torn it down.
                    Err(e) => panic!("a target task failed: {e}"),
                };
                if r.outcome == Outcome::Failed && !opts.keep_going {
                    stop_launching = true;
                }
                shared.emitter.send(Event::Finished(r.clone()));
                results[i] = Some(r);
            }
            // Running targets see the same token and tear down on their own; the loop only
            // has to stop launching and wait for them.
            _ = token.cancelled(), if !stop_launching => stop_launching = true,
        }
    }

    for (i, t) in pending {
        let outcome = if token.is_cancelled() {
            Outcome::Cancelled
        } else {
            Outcome::Skipped
        };
        let r = TargetResult {
            target: t.name.clone(),
            outcome,
            phase: Phase::Queued,
            seconds: 0.0,
            artifacts: vec![],
            log: shared.logs.join(format!("{}.log", t.name)),
            exit_code: None,
            error: Some(match outcome {
                Outcome::Cancelled => format!("{} not started: cancelled", t.name),
                _ => format!(
                    "{} not started: an earlier target failed (use --keep-going)",
                    t.name
                ),
            }),
            context_digest: None,
        };
        shared.emitter.send(Event::Finished(r.clone()));
        results[i] = Some(r);
    }

    let results: Vec<TargetResult> = results
        .into_iter()
        .map(|r| r.expect("every target has a result"))
        .collect();
    let count = |o| results.iter().filter(|r| r.outcome == o).count();
    shared.emitter.send(Event::RunFinished {
        succeeded: count(Outcome::Succeeded),
        cached: count(Outcome::Cached),
        failed: count(Outcome::Failed),
        cancelled: count(Outcome::Cancelled),
        skipped: count(Outcome::Skipped),
        seconds: started.elapsed().as_secs_f64(),
    });
    results
}
