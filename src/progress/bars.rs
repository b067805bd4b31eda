//! The live view: one redrawn line per target, for a person watching a terminal.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use super::lines::{finish_text, fmt_seconds, reclaimed, transfer_text, waiting};
use super::sanitize;
use crate::events::{Event, Outcome, Phase};

/// Fast enough that tenths of a second visibly advance; the draw target caps redraws anyway.
const TICK: Duration = Duration::from_millis(100);

/// Wide enough for the longest phase name, so output columns line up across targets.
const PHASE_WIDTH: usize = 9;

pub(super) struct Bars {
    multi: MultiProgress,
    lines: HashMap<String, Line>,
    name_width: usize,
    styles: Styles,
}

struct Line {
    bar: ProgressBar,
    /// Left the queue: from then on the line spins and its clock runs.
    running: bool,
}

struct Styles {
    queued: ProgressStyle,
    running: ProgressStyle,
    succeeded: ProgressStyle,
    failed: ProgressStyle,
    stopped: ProgressStyle,
}

impl Styles {
    fn new() -> Self {
        Styles {
            queued: template("  {prefix:.dim}"),
            // `{wide_msg}` takes what is left of the terminal width and truncates to it, so a
            // long output line never wraps and breaks the redraw.
            running: template("{spinner:.cyan} {prefix} {elapsed_s:>6} {wide_msg:.dim}").with_key(
                "elapsed_s",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&fmt_seconds(state.elapsed().as_secs_f64()));
                },
            ),
            // Finished lines carry their mark in the prefix so only the mark is coloured.
            succeeded: template("{prefix:.green.bold} {wide_msg}"),
            failed: template("{prefix:.red.bold} {wide_msg}"),
            stopped: template("{prefix:.yellow.bold} {wide_msg}"),
        }
    }
}

/// The templates are constants, so a parse error is a bug caught by the tests, not a runtime
/// condition.
fn template(text: &str) -> ProgressStyle {
    ProgressStyle::with_template(text).expect("progress templates are valid")
}

impl Bars {
    pub(super) fn new(multi: MultiProgress) -> Self {
        Bars {
            multi,
            lines: HashMap::new(),
            name_width: 0,
            styles: Styles::new(),
        }
    }

    pub(super) fn show(&mut self, event: &Event) {
        match event {
            Event::RunStarted { targets, .. } => {
                let longest = targets.iter().map(|t| t.chars().count()).max().unwrap_or(0);
                self.name_width = self.name_width.max(longest);
                for target in targets {
                    self.line(target);
                }
            }
            Event::Phase { target, phase, .. } => self.enter(target, *phase),
            Event::Output { target, line } => {
                let text = sanitize(line).trim_start().to_owned();
                self.line(target).bar.set_message(text);
            }
            // The step's line comes as output too, which the line shows.
            Event::Boot { .. } | Event::ImageStep { .. } => {}
            Event::Waiting {
                target,
                reason,
                retry_in_seconds,
            } => {
                let text = waiting(reason, *retry_in_seconds);
                self.line(target).bar.set_message(text);
            }
            Event::MachineReclaimed {
                target,
                machine,
                reason,
                retrying,
            } => {
                let text = reclaimed(machine, reason, *retrying);
                self.line(target).bar.println(text.clone());
                self.line(target).bar.set_message(text);
            }
            Event::Machine { target, start, .. } => {
                if !start.is_empty() {
                    let text = sanitize(start);
                    self.line(target).bar.set_message(text);
                }
            }
            Event::Packed { target, made, .. } => {
                let text = if *made {
                    "context packed"
                } else {
                    "context pack reused"
                };
                self.line(target).bar.set_message(text);
            }
            Event::Transfer {
                target,
                bytes,
                total,
                seconds,
            } => {
                let text = transfer_text(*bytes, *total, *seconds);
                self.line(target).bar.set_message(text);
            }
            Event::Finished(result) => {
                let (mark, style) = match result.outcome {
                    Outcome::Succeeded | Outcome::Cached => ("✓", self.styles.succeeded.clone()),
                    Outcome::Failed => ("✗", self.styles.failed.clone()),
                    Outcome::Cancelled | Outcome::Skipped => ("-", self.styles.stopped.clone()),
                };
                let text = format!("{} {}", self.padded(&result.target), finish_text(result));
                let bar = &self.line(&result.target).bar;
                bar.set_style(style);
                bar.set_prefix(mark);
                bar.finish_with_message(text);
            }
            Event::RunFinished { .. } => {}
        }
    }

    /// Leaves a visible mark on targets that never finished, instead of a frozen spinner.
    pub(super) fn close(self) {
        for (target, line) in &self.lines {
            if !line.bar.is_finished() {
                line.bar.set_style(self.styles.stopped.clone());
                line.bar.set_prefix("?");
                line.bar
                    .abandon_with_message(format!("{} no result", self.padded(target)));
            }
        }
    }

    fn enter(&mut self, target: &str, phase: Phase) {
        let prefix = format!("{} {:<PHASE_WIDTH$}", self.padded(target), phase.as_str());
        let running_style = self.styles.running.clone();
        let line = self.line(target);
        if phase != Phase::Queued && !line.running {
            // The clock starts when the target gets a slot: time spent queued is `-j`'s
            // doing, not the target's.
            line.running = true;
            line.bar.set_style(running_style);
            line.bar.reset_elapsed();
            line.bar.enable_steady_tick(TICK);
        }
        line.bar.set_prefix(prefix);
        // The previous phase's last output line would be misleading under the new phase.
        line.bar.set_message("");
    }

    fn line(&mut self, target: &str) -> &mut Line {
        if !self.lines.contains_key(target) {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(self.styles.queued.clone());
            bar.set_prefix(format!(
                "{} {}",
                self.padded(target),
                Phase::Queued.as_str()
            ));
            let line = Line {
                bar,
                running: false,
            };
            self.lines.insert(target.to_owned(), line);
        }
        self.lines.get_mut(target).expect("inserted above")
    }

    fn padded(&self, target: &str) -> String {
        format!("{target:<width$}", width = self.name_width)
    }

    /// A target's prefix, message and whether it is finished: what tests can observe.
    #[cfg(test)]
    pub(super) fn state(&self, target: &str) -> Option<(String, String, bool)> {
        let bar = &self.lines.get(target)?.bar;
        Some((bar.prefix(), bar.message(), bar.is_finished()))
    }
}
