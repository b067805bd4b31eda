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
mod lines;
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

use lines::{fmt_seconds, plain_line};
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
            | Event::ImageStep { .. }
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
