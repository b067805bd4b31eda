//! The words of plain output: a CI-log line per event worth one, and the short texts the
//! live lines and the summary share (durations, transfers, why a target ended).

use super::sanitize;
use crate::events::{Event, Outcome, Phase, TargetResult};

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

/// The CI-log line for an event, if it deserves one.
///
/// Output lines are left out: a build prints thousands, and the log file has them all.
/// Entering `queued` is left out too: every target starts there, so it says nothing.
pub(super) fn plain_line(event: &Event) -> Option<String> {
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
        Event::ImageStep { target, detail, .. } => Some(format!("[{target}] {}", sanitize(detail))),
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
pub(super) fn transfer_text(bytes: u64, total: u64, seconds: f64) -> String {
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
pub(super) fn finish_text(r: &TargetResult) -> String {
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
pub(super) fn short_error(r: &TargetResult) -> Option<String> {
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
pub(super) fn fmt_seconds(seconds: f64) -> String {
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
