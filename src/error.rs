//! The crate's error type. Every variant carries the context a user needs to act on it
//! (which file, which machine, which log), and `main` prints the whole cause chain.

use std::path::PathBuf;

use crate::config::ConfigError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}")]
    Ssh {
        context: String,
        #[source]
        source: russh::Error,
    },

    /// The guest answered with a host key other than the one runner generated for it.
    /// Never retried: it means something else is listening on the machine's port.
    #[error(
        "host key mismatch for {machine}: expected {expected}, guest presented {presented}; refusing to connect"
    )]
    HostKeyMismatch {
        machine: String,
        expected: String,
        presented: String,
    },

    #[error("{machine} did not accept SSH within {secs}s (console log: {})", console.display())]
    BootTimeout {
        machine: String,
        secs: u64,
        console: PathBuf,
    },

    #[error("{machine} exited during boot ({status}); console log {}:\n{tail}", console.display())]
    MachineDied {
        machine: String,
        status: String,
        console: PathBuf,
        tail: String,
    },

    #[error("`{program}` failed ({status}); log: {}", log.display())]
    Tool {
        program: String,
        status: String,
        log: PathBuf,
    },

    #[error("cancelled")]
    Cancelled,

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }
}

/// Attaches a human sentence to an I/O error, the way `anyhow::Context` would, but typed.
pub trait IoContext<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context().into(),
            source,
        })
    }
}

/// Formats an error with every `source()` below it, one per line, as `main` prints it.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("error: {err}");
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(&format!("\n  caused by: {e}"));
        cur = e.source();
    }
    out
}
