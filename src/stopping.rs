//! The process-wide "stop" flag the first Ctrl-C or SIGTERM sets (`signals`), for loops that
//! run on blocking threads (hashing a context or a download, writing a pack), which no
//! cancellation token reaches: they poll it between chunks and end with [`Error::Cancelled`]
//! within a chunk's time. Its own module so that those loops need nothing of `signals` (which
//! knows the machine registry).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal asked this process to stop.
pub fn asked() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// `Err(Cancelled)` once a signal asked this process to stop.
pub fn check() -> Result<()> {
    match asked() {
        true => Err(Error::Cancelled),
        false => Ok(()),
    }
}

/// Asks every polling loop to stop (the first signal).
pub(crate) fn ask() {
    STOPPING.store(true, Ordering::Relaxed);
}
