//! One module per subcommand. Each gets the run-wide [`Env`] and returns the process's exit
//! code (or an error `main` prints with its causes).

pub mod artifacts;
pub mod build;
pub mod gc;
pub mod image;
pub mod project;
pub mod reproduce;
pub mod vm;

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::machine::Machines;
use crate::paths::Dirs;
use crate::signals::Shutdown;

/// What every command may need: where things are, where machines come from, the signals.
pub struct Env {
    pub project: PathBuf,
    pub dirs: Dirs,
    pub machines: Arc<Machines>,
    pub shutdown: Shutdown,
    /// stderr is a terminal: live progress instead of plain lines.
    pub interactive: bool,
}

impl Env {
    /// Runs `fut` unless the first signal comes first.
    pub async fn cancellable<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = fut => r,
            _ = self.shutdown.token.cancelled() => Err(Error::Cancelled),
        }
    }
}
