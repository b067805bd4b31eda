//! The crate's error type. Every variant carries the context a user needs to act on it
//! (which file, which machine, which log), keeps the error underneath as its `source()`, and
//! `main` prints the whole cause chain.

use std::path::PathBuf;

use crate::config::ConfigError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from another library, kept whole as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

    /// An AWS API call failed. `code` is the service's error code when it answered one
    /// (`NoSuchBucket`, `InsufficientInstanceCapacity`): callers classify by it, never by text.
    #[error("{context} failed: {summary}")]
    Aws {
        context: String,
        code: Option<String>,
        /// One line: `code: message`, or the transport's account (connection refused, timeout).
        summary: String,
        #[source]
        source: BoxError,
    },

    #[error("{context}")]
    Key {
        context: &'static str,
        #[source]
        source: russh::keys::ssh_key::Error,
    },

    /// A download from a store broke off mid-stream.
    #[error("download of `{uri}` broke off")]
    Download {
        uri: String,
        #[source]
        source: BoxError,
    },

    /// A download server's answer was refused: a redirect that leaves https, a range at the
    /// wrong offset, a trickle, a file over the size cap, an error status.
    #[error("builder `{builder}`: `{url}` {problem}")]
    DownloadRefused {
        builder: String,
        url: String,
        problem: String,
    },

    /// A downloaded image is not the one its builder names; the download is removed.
    #[error(
        "builder `{builder}`: the image from `{url}` has {algo} {actual}, but {expected} was \
         expected; the download was removed"
    )]
    ChecksumMismatch {
        algo: &'static str,
        builder: String,
        url: String,
        expected: String,
        actual: String,
    },

    /// A publish failed and so did removing what it had put; the journal entry stays.
    #[error(
        "{cause}; cleaning up `{location}` also failed; it is recorded in `{}` and \
         `runner gc --force` finishes the cleanup once the store is reachable",
        journal.display()
    )]
    CleanupFailed {
        cause: String,
        location: String,
        journal: PathBuf,
        #[source]
        source: Box<Error>,
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

    /// A machine restored from a snapshot could not reseed its random generator: it would
    /// share the snapshot's random state with every machine restored from it.
    #[error(
        "{machine} could not reseed its random generator after the restore (console log: {})",
        console.display()
    )]
    Unseeded { machine: String, console: PathBuf },

    #[error("{machine} refused runner's key for user `{user}`")]
    HostRefusedKey { machine: String, user: String },

    #[error("{machine} did not accept SSH within {secs}s{reached} (console log: {})", console.display())]
    BootTimeout {
        machine: String,
        secs: u64,
        console: PathBuf,
        /// How far the boot got: `; it reached: firmware+kernel, initrd`.
        reached: String,
    },

    #[error("{machine} {status}; console log {}:\n{tail}", console.display())]
    MachineDied {
        machine: String,
        /// What ended it, e.g. "exited during boot (exit status: 1)".
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

    /// What the guest sent back was refused (hostile tar entry, over a limit, not asked for).
    #[error("{0}")]
    ArtifactRefused(String),

    /// A guest command printed more than runner keeps of it; runner stopped reading there.
    #[error(
        "`{command}` in the guest printed more than {cap} bytes on its {stream}, runner's cap for it; stopped reading"
    )]
    OutputTooLarge {
        command: String,
        stream: &'static str,
        cap: u64,
    },

    /// A remote command of the guest contract failed (unpacking the context, packing
    /// artifacts): the guest is not in the state the contract promises.
    #[error("{what} in the guest failed ({status})")]
    Guest { what: String, status: String },

    /// A file runner reads (a manifest, a record) is unreadable or not what it should be.
    #[error("`{}`: {problem}", path.display())]
    BadFile { path: PathBuf, problem: String },

    /// A manifest (read from anywhere, or about to be written) holds a field runner refuses:
    /// a name that is no single path component, a digest that is not one, a URI outside the
    /// build's own location, a shape outside the builder limits.
    #[error("{what}: invalid manifest field `{field}`")]
    InvalidManifest {
        what: String,
        field: String,
        #[source]
        source: crate::config::names::Invalid,
    },

    /// A build context holds a host secret: the guest, and every script it runs, could read it.
    #[error(
        "{what} `{}` is inside the build context `{}` (as `{}`): a build could read it. \
         Keep it outside the project (`runner key generate` writes to your config directory by \
         default) or leave it out of the context in .runnerignore",
        secret.display(), context.display(), entry.display()
    )]
    SecretInContext {
        what: &'static str,
        secret: PathBuf,
        context: PathBuf,
        entry: PathBuf,
    },

    /// A background task died (a panic in a blocking reader or writer).
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
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

    /// The AWS service error code, if this is an AWS error that carries one.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
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

/// Awaits a blocking task; a panic inside it becomes [`Error::Task`].
pub async fn joined<T>(what: &'static str, task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await.map_err(|source| Error::Task { what, source })?
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
