//! How a target can fail, as a type: the dispatcher, the summary and the JSON events read
//! the variant instead of parsing text.

use std::time::Duration;

use crate::error::Error;
use crate::events::FailureKind;
use crate::guest::ExitStatus;

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
