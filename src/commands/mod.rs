//! One module per subcommand. Each gets the run-wide [`Env`] and returns the process's exit
//! code (or an error `main` prints with its causes).

pub mod artifacts;
pub mod build;
pub mod cache;
pub mod gc;
pub mod image;
pub mod init;
pub mod key;
pub mod plan;
pub mod project;
pub mod reproduce;
pub mod verify;
pub mod vm;
pub mod why;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::machine::Machines;
use crate::paths::Dirs;
use crate::progress::{Format, JSON_SCHEMA};
use crate::signals::Shutdown;

/// What every command may need: where things are, where machines come from, the signals.
pub struct Env {
    pub project: PathBuf,
    pub dirs: Dirs,
    pub machines: Arc<Machines>,
    pub shutdown: Shutdown,
    /// stderr is a terminal (and not `--quiet`): live progress instead of plain lines.
    pub interactive: bool,
    /// `--message-format`.
    pub format: Format,
    /// `-q`: no progress, no notes.
    pub quiet: bool,
}

pub use crate::error::Exit;

/// Prints `doc` as one line of JSON with the schema version added.
pub fn print_json(doc: impl Serialize) {
    let mut v = serde_json::to_value(doc).expect("serializes");
    if let Some(map) = v.as_object_mut() {
        map.insert("schema".into(), JSON_SCHEMA.into());
    }
    println!("{v}");
}

impl Env {
    /// The host side of a run made here.
    pub fn host(&self) -> crate::run::Host<'_> {
        crate::run::Host {
            machines: self.machines.clone(),
            dirs: &self.dirs,
            cancel: self.shutdown.token.clone(),
        }
    }

    /// Runs `fut` unless the first signal comes first.
    pub async fn cancellable<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = fut => r,
            _ = self.shutdown.token.cancelled() => Err(Error::Cancelled),
        }
    }
}

/// The project here, if there is one: a directory without `runner.toml` has none, but a
/// broken `runner.toml` is an error, never silently "no project" (which would publish a
/// reproduction unsigned, or verify with the wrong key).
pub fn project_if_any(env: &Env) -> crate::Result<Option<crate::config::Project>> {
    if !env.project.join("runner.toml").exists() {
        return Ok(None);
    }
    Ok(Some(crate::config::Project::load(&env.project)?))
}
