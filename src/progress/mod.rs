//! Shows build [`Event`]s to people and to machines, and remembers what the summary needs.
//!
//! The pipeline only emits events; this module is the single place that decides how they look.
//! Three views exist because three audiences do: a person at a terminal wants one live line per
//! target, a CI log wants a few stable plain lines (live redraws turn into garbage there), and
//! tooling wants JSON lines on stdout that it can parse without scraping human text.
//!
//! Guest output is untrusted: a provision script can print escape sequences that move the
//! cursor, retitle the terminal or hide text. Everything that came from the guest goes through
//! [`sanitize`] before a terminal sees it. JSON keeps lines as-is, since JSON escaping already
//! makes control characters inert.

mod bars;
mod summary;
mod untrusted;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressDrawTarget};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::events::{Event, Outcome, Phase, TargetResult};

pub use summary::print_summary;
pub use untrusted::sanitize;

/// The version of every JSON document runner prints (`"schema": 1`): fields may be added
/// within a version, never removed or changed in meaning.
pub const JSON_SCHEMA: u32 = 1;

/// How events are shown; chosen once, before the run starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Live lines on a terminal, plain lines otherwise; always on stderr.
    #[default]
    Human,
    /// One JSON object per event on stdout, so stdout stays machine-readable.
    Json,
    /// Nothing while the run goes (`-q`); the summary only if something failed.
    Quiet,
}

/// What the run produced, for the summary table and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// One per target, in the order `RunStarted` announced them.
    pub results: Vec<TargetResult>,
    pub succeeded: usize,
    /// Cache hits: up to date without a build.
    pub cached: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub skipped: usize,
    /// Wall-clock length of the run.
    pub seconds: f64,
}

impl Summary {
    /// True only if every target succeeded: cancelled or skipped targets built nothing either.
    pub fn all_succeeded(&self) -> bool {
        self.results.iter().all(|r| r.outcome.ok())
    }
}

/// Consumes events until every sender is dropped, showing them as `format` asks.
///
/// `interactive` should say whether stderr is a terminal; it only matters for
/// [`Format::Human`]. The summary is returned rather than printed so the caller decides when
/// (after the last line of progress) and where; see [`print_summary`].
pub async fn run(mut rx: UnboundedReceiver<Event>, format: Format, interactive: bool) -> Summary {
    match format {
        Format::Json => render(&mut rx, View::Json, &mut io::stdout()).await,
        Format::Human if interactive => {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            render(
                &mut rx,
                View::Bars(Box::new(bars::Bars::new(multi))),
                &mut io::sink(),
            )
            .await
        }
        Format::Human => render(&mut rx, View::Plain, &mut io::stderr()).await,
        Format::Quiet => render(&mut rx, View::Plain, &mut io::sink()).await,
    }
}

/// The view in use; `Json` and `Plain` write to the `out` handed to [`render`].
enum View {
    Json,
    Plain,
    Bars(Box<bars::Bars>),
}

/// The event loop behind [`run`], with the writer injectable so tests can read what it wrote.
async fn render(
    rx: &mut UnboundedReceiver<Event>,
    mut view: View,
    out: &mut (dyn Write + Send),
) -> Summary {
    let mut tally = Tally::new();
    // A closed stdout (`runner build --json | head`) must not stop the build or lose the
    // summary, so the first write error silences the view and the loop carries on counting.
    let mut writable = true;
    while let Some(event) = rx.recv().await {
        match &mut view {
            View::Json if writable => writable = write_json(&event, out).is_ok(),
            View::Plain if writable => {
                if let Some(line) = plain_line(&event) {
                    writable = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
                }
            }
            View::Bars(bars) => bars.show(&event),
            View::Json | View::Plain => {}
        }
        tally.record(event);
    }
    if let View::Bars(bars) = view {
        bars.close();
    }
    tally.into_summary()
}

/// Writes one event as one line, with the schema version; flushed, because a consumer may
/// be waiting on each line.
fn write_json(event: &Event, out: &mut dyn Write) -> io::Result<()> {
    let mut v = serde_json::to_value(event)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("schema".into(), JSON_SCHEMA.into());
    }
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The CI-log line for an event, if it deserves one.
///
/// Output lines are left out: a build prints thousands, and the log file has them all.
/// Entering `queued` is left out too: every target starts there, so it says nothing.
/// `waiting: <why> (next try in 2.0s)`.
pub(super) fn waiting(reason: &str, retry_in_seconds: f64) -> String {
    format!(
        "waiting: {} (next try in {})",
        sanitize(reason),
        fmt_seconds(retry_in_seconds)
    )
}

/// `machine … reclaimed: <why>; starting again on a fresh machine`.
pub(super) fn reclaimed(machine: &str, reason: &str, retrying: bool) -> String {
    format!(
        "machine {} reclaimed: {}{}",
        sanitize(machine),
        sanitize(reason),
        if retrying {
            "; starting again on a fresh machine"
        } else {
            ""
        }
    )
}

fn plain_line(event: &Event) -> Option<String> {
    match event {
        Event::RunStarted { targets, jobs } => Some(match targets.len() {
            1 => format!("building 1 target, {jobs} at a time"),
            n => format!("building {n} targets, {jobs} at a time"),
        }),
        Event::Phase {
            phase: Phase::Queued,
            ..
        } => None,
        Event::Phase {
            target,
            phase,
            seconds,
        } => Some(format!(
            "[{target}] {} ({})",
            phase.as_str(),
            fmt_seconds(*seconds)
        )),
        Event::Output { .. } | Event::Boot { .. } => None,
        Event::Waiting {
            target,
            reason,
            retry_in_seconds,
        } => Some(format!("[{target}] {}", waiting(reason, *retry_in_seconds))),
        Event::MachineReclaimed {
            target,
            machine,
            reason,
            retrying,
        } => Some(format!(
            "[{target}] {}",
            reclaimed(machine, reason, *retrying)
        )),
        Event::Machine {
            target,
            machine,
            start,
        } => Some(match start.as_str() {
            "" => format!("[{target}] machine {machine}"),
            how => format!("[{target}] machine {machine}: {how}"),
        }),
        Event::Packed {
            target,
            made,
            bytes,
            ..
        } => Some(format!(
            "[{target}] context {} ({bytes} bytes)",
            if *made { "packed" } else { "pack reused" }
        )),
        // One line when done; the live view shows the running figures.
        Event::Transfer {
            target,
            bytes,
            total,
            seconds,
        } if bytes >= total => Some(format!(
            "[{target}] {}",
            transfer_text(*bytes, *total, *seconds)
        )),
        Event::Transfer { .. } => None,
        Event::Finished(result) => Some(format!("[{}] {}", result.target, finish_text(result))),
        Event::RunFinished { .. } => None,
    }
}

/// "uploaded 120.0 MiB of 300.0 MiB, 25.3 MiB/s": what a publish has done and how fast.
fn transfer_text(bytes: u64, total: u64, seconds: f64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    let rate = if seconds > 0.0 {
        bytes as f64 / MIB / seconds
    } else {
        0.0
    };
    format!(
        "uploaded {:.1} MiB of {:.1} MiB, {rate:.1} MiB/s",
        bytes as f64 / MIB,
        total as f64 / MIB
    )
}

/// How a target ended, in one line; shared by the live and the plain view so they agree.
fn finish_text(r: &TargetResult) -> String {
    let took = fmt_seconds(r.seconds);
    let mut text = match r.outcome {
        Outcome::Succeeded => match r.artifacts.len() {
            1 => format!("succeeded in {took} (1 artifact)"),
            n => format!("succeeded in {took} ({n} artifacts)"),
        },
        Outcome::Cached => "cache hit: inputs unchanged since the published build".to_owned(),
        Outcome::Skipped => "skipped".to_owned(),
        Outcome::Failed | Outcome::Cancelled => {
            format!(
                "{} in {} after {took}",
                r.outcome.as_str(),
                r.phase.as_str()
            )
        }
    };
    if !r.outcome.ok()
        && let Some(error) = short_error(r)
    {
        text.push_str(": ");
        text.push_str(&error);
    }
    text
}

/// The first line of the error, or the exit code when there is no text: the full error goes
/// in the summary, a progress line only has room for the gist.
///
/// The pipeline's errors open with "<target> failed in <phase>: ", which the line around
/// this already says, so that opening is dropped when present.
fn short_error(r: &TargetResult) -> Option<String> {
    let first = r.error.as_deref().and_then(|e| {
        e.lines()
            .map(|line| sanitize(line).trim_start().to_owned())
            .find(|line| !line.is_empty())
    });
    let Some(first) = first else {
        return r.exit_code.map(|code| format!("exit code {code}"));
    };
    let opening = format!(
        "{} {} in {}: ",
        r.target,
        r.outcome.as_str(),
        r.phase.as_str()
    );
    Some(
        first
            .strip_prefix(&opening)
            .map(str::to_owned)
            .unwrap_or(first),
    )
}

/// Durations short enough to read at a glance; tenths only matter under a minute.
fn fmt_seconds(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    };
    if s < 59.95 {
        format!("{s:.1}s")
    } else if s < 3599.5 {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        let minutes = (s / 60.0).round() as u64;
        format!("{}h{:02}m", minutes / 60, minutes % 60)
    }
}

/// Everything the summary needs, gathered as events go by.
struct Tally {
    /// Announced targets first, then any target first seen in a later event.
    order: Vec<String>,
    results: HashMap<String, TargetResult>,
    /// The last phase each target entered, to describe targets that never reported a result.
    phases: HashMap<String, (Phase, f64)>,
    run_seconds: Option<f64>,
    started: Instant,
}

impl Tally {
    fn new() -> Self {
        Tally {
            order: Vec::new(),
            results: HashMap::new(),
            phases: HashMap::new(),
            run_seconds: None,
            started: Instant::now(),
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::RunStarted { targets, .. } => {
                for target in targets {
                    self.see(&target);
                }
            }
            Event::Phase {
                target,
                phase,
                seconds,
            } => {
                self.see(&target);
                self.phases.insert(target, (phase, seconds));
            }
            Event::Output { .. }
            | Event::Transfer { .. }
            | Event::Packed { .. }
            | Event::Machine { .. }
            | Event::Waiting { .. }
            | Event::MachineReclaimed { .. }
            | Event::Boot { .. } => {}
            Event::Finished(result) => {
                self.see(&result.target);
                self.results.insert(result.target.clone(), result);
            }
            Event::RunFinished { seconds, .. } => self.run_seconds = Some(seconds),
        }
    }

    fn see(&mut self, target: &str) {
        if !self.order.iter().any(|t| t == target) {
            self.order.push(target.to_owned());
        }
    }

    /// Counts come from the results rather than from `RunFinished`, so the totals line always
    /// agrees with the table, even when the run ended without saying goodbye.
    fn into_summary(mut self) -> Summary {
        let results: Vec<TargetResult> = std::mem::take(&mut self.order)
            .into_iter()
            .map(|target| match self.results.remove(&target) {
                Some(result) => result,
                None => self.missing(target),
            })
            .collect();
        let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
        Summary {
            succeeded: count(Outcome::Succeeded),
            cached: count(Outcome::Cached),
            failed: count(Outcome::Failed),
            cancelled: count(Outcome::Cancelled),
            skipped: count(Outcome::Skipped),
            seconds: self
                .run_seconds
                .unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
            results,
        }
    }

    /// A target whose `Finished` never came (the pipeline died or dropped its emitter). It
    /// counts as failed: the run cannot vouch for it, and hiding it would be worse.
    fn missing(&self, target: String) -> TargetResult {
        let (phase, seconds) = self
            .phases
            .get(&target)
            .copied()
            .unwrap_or((Phase::Queued, 0.0));
        TargetResult {
            target,
            outcome: Outcome::Failed,
            phase,
            seconds,
            artifacts: Vec::new(),
            log: PathBuf::new(),
            exit_code: None,
            failure: Some(crate::events::FailureKind::Error),
            error: Some("the run ended without a result for this target".to_owned()),
            context_digest: None,
            log_truncated: None,
        }
    }
}

#[cfg(test)]
mod tests;
