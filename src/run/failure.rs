//! How a target can fail, as a type: the dispatcher, the summary and the JSON events read
//! the variant instead of parsing text.

use std::time::Duration;

use crate::error::{Error, chain};
use crate::events::{FailureKind, Outcome, TargetResult};
use crate::guest::ExitStatus;
use crate::logs::{LogSink, tail};

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The provision script ran and did not exit 0.
    #[error("provision script {status}")]
    Script { status: ExitStatus },

    #[error("timed out after {}", humantime::format_duration(*after))]
    TimedOut { after: Duration },

    #[error("cancelled")]
    Cancelled,

    /// Not launched: the run's spend cap.
    #[error(transparent)]
    OverCap(#[from] super::budget::OverCap),

    /// Everything else, with its cause chain: a machine that died, a refused artifact, the
    /// store, the host.
    #[error(transparent)]
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Cancelled => Failure::Cancelled,
            e => Failure::Error(e),
        }
    }
}

impl Failure {
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Script { .. } => FailureKind::Script,
            Failure::TimedOut { .. } => FailureKind::Timeout,
            Failure::Cancelled => FailureKind::Cancelled,
            Failure::OverCap(_) => FailureKind::SpendCap,
            Failure::Error(Error::MachineDied { .. }) => FailureKind::MachineDied,
            Failure::Error(Error::MachineReclaimed { .. }) => FailureKind::MachineReclaimed,
            Failure::Error(Error::ArtifactRefused(_)) => FailureKind::ArtifactRefused,
            Failure::Error(_) => FailureKind::Error,
        }
    }

    /// The script's exit code, when the script is what failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Failure::Script { status } => Some(status.code()),
            _ => None,
        }
    }
}

/// Records a failure in the result (and the log): outcome, kind, exit code and the message
/// that names target, phase, cause, exit code and log.
pub(super) fn fail(r: &mut TargetResult, f: Failure, sink: Option<&LogSink>, note: &str) {
    r.failure = Some(f.kind());
    r.exit_code = f.exit_code();
    if let Failure::Cancelled = f {
        r.outcome = Outcome::Cancelled;
        r.error = Some(format!("{} cancelled in {}", r.target, r.phase.as_str()));
        return;
    }
    if let Failure::OverCap(over) = &f {
        r.outcome = Outcome::Skipped;
        if let Some(s) = sink {
            s.note(&format!("not launched: {over}"));
        }
        r.error = Some(format!("{} skipped: {over}", r.target));
        return;
    }
    r.outcome = Outcome::Failed;
    if let Some(s) = sink {
        s.note(&format!("failed in {}: {}", r.phase.as_str(), chain(&f)));
        // The failure quotes the log's end: write it out first.
        r.log_truncated = Some(s.finish()).filter(|n| *n > 0);
    }
    r.error = Some(describe_failure(r, &f) + note);
}

/// `<target> failed in <phase>: <what> (exit code N); log: <path>` and the log's last lines.
fn describe_failure(r: &TargetResult, f: &Failure) -> String {
    let mut s = format!("{} failed in {}: {f}", r.target, r.phase.as_str());
    if let Some(c) = r.exit_code {
        s.push_str(&format!(" (exit code {c})"));
    }
    s.push_str(&format!("; log: {}", r.log.display()));
    let last = tail(&r.log, 10);
    if !last.trim().is_empty() {
        s.push_str("\n  last lines of the log:");
        for l in last.lines() {
            s.push_str("\n    ");
            s.push_str(&crate::progress::sanitize(l));
        }
    }
    s
}
