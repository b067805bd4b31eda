//! Why a QEMU machine boots cold instead of from a warm-start snapshot: a value, shown as
//! the machine's start line ("cold (--cold)") and in the target log.

use std::fmt;

use crate::error::Error;

#[derive(Debug)]
pub enum ColdBoot {
    /// `--cold` / `RUNNER_COLD`.
    Asked,
    /// A cloud image always boots (its own init runs once per instance).
    CloudImage,
    /// The builder says `warm = false`.
    WarmOff,
    /// The machine has more disks than a snapshot was made with.
    ExtraDisks,
    /// No snapshot could be made or found.
    NoSnapshot(Error),
    /// A snapshot exists, but restoring it failed.
    WarmFailed(Error),
}

impl fmt::Display for ColdBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColdBoot::Asked => write!(f, "cold (--cold)"),
            ColdBoot::CloudImage => write!(f, "cold (a cloud image always boots)"),
            ColdBoot::WarmOff => write!(f, "cold (warm = false)"),
            ColdBoot::ExtraDisks => write!(f, "cold (more disks than a snapshot has)"),
            ColdBoot::NoSnapshot(e) => write!(f, "cold (no snapshot: {e})"),
            ColdBoot::WarmFailed(e) => write!(f, "cold (the warm start failed: {e})"),
        }
    }
}
