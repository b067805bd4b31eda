//! The table printed after a run: the one place to look for what happened and where the logs
//! are, whichever view showed the progress.

use std::io::Write;

use super::{Summary, fmt_seconds, sanitize};
use crate::events::{Outcome, TargetResult};

/// Enough log to see the failing command and its complaint without scrolling.
const LOG_TAIL_LINES: usize = 10;

const GAP: &str = "  ";

/// Writes the results table, the details of each failure, and the totals.
///
/// Write errors are ignored: this is the last thing a run prints, and a closed stderr leaves
/// nobody to tell.
pub fn print_summary(summary: &Summary, out: &mut impl Write) {
    let text = summary_text(summary);
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Opens with a blank line to set the summary apart from the progress lines above it.
pub(super) fn summary_text(summary: &Summary) -> String {
    let mut text = String::from("\n");
    if !summary.results.is_empty() {
        text.push_str(&table(&summary.results));
    }
    for result in summary
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
    {
        text.push('\n');
        text.push_str(&failure(result));
    }
    for r in &summary.results {
        if let Some(n) = r.log_truncated {
            text.push_str(&format!(
                "\n{}: log truncated, {n} bytes of output left out (head and tail kept in {})\n",
                r.target,
                r.log.display()
            ));
        }
    }
    text.push_str(&format!(
        "\n{} succeeded, {} cached, {} failed, {} cancelled, {} skipped in {}\n",
        summary.succeeded,
        summary.cached,
        summary.failed,
        summary.cancelled,
        summary.skipped,
        fmt_seconds(summary.seconds),
    ));
    text
}

/// Text columns are left-aligned and number columns right-aligned, each as wide as its widest
/// cell; LOG comes last so long paths need no padding.
fn table(results: &[TargetResult]) -> String {
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            [
                r.target.clone(),
                r.outcome.as_str().to_owned(),
                fmt_seconds(r.seconds),
                r.artifacts.len().to_string(),
                log_name(r),
            ]
        })
        .collect();
    let header = ["TARGET", "RESULT", "DURATION", "ARTIFACTS", "LOG"].map(str::to_owned);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for [target, result, duration, artifacts, log] in std::iter::once(&header).chain(&rows) {
        let [w_target, w_result, w_duration, w_artifacts, _] = widths;
        text.push_str(&format!(
            "{target:<w_target$}{GAP}{result:<w_result$}{GAP}{duration:>w_duration$}{GAP}\
             {artifacts:>w_artifacts$}{GAP}{log}\n"
        ));
    }
    text
}

fn log_name(r: &TargetResult) -> String {
    if r.log.as_os_str().is_empty() {
        "-".to_owned()
    } else {
        r.log.display().to_string()
    }
}

/// The error as the pipeline wrote it, then the end of the log, which usually holds the actual
/// compiler or package-manager complaint, unless the error already quotes it. Both may quote
/// the guest, hence [`sanitize`].
fn failure(r: &TargetResult) -> String {
    let mut text = String::new();
    match &r.error {
        Some(error) => {
            for line in error.lines() {
                text.push_str(&sanitize(line));
                text.push('\n');
            }
        }
        None => {
            let took = fmt_seconds(r.seconds);
            text.push_str(&format!(
                "{} failed in {} after {took}",
                r.target,
                r.phase.as_str()
            ));
            if let Some(code) = r.exit_code {
                text.push_str(&format!(" (exit code {code})"));
            }
            text.push('\n');
        }
    }
    if r.log.as_os_str().is_empty() {
        return text;
    }
    let tail = crate::logs::tail(&r.log, LOG_TAIL_LINES);
    let last = tail
        .lines()
        .rev()
        .map(sanitize)
        .find(|l| !l.trim().is_empty());
    let Some(last) = last else {
        return text;
    };
    if !text.contains(last.trim()) {
        text.push_str(&format!("  last lines of {}:\n", r.log.display()));
        for line in tail.lines() {
            text.push_str(&format!("    {}\n", sanitize(line)));
        }
    }
    text
}
