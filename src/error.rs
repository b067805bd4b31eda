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

    /// A target asked for that runner.toml does not define.
    #[error(transparent)]
    Target(#[from] crate::config::TargetError),

    #[error("no targets defined in {}", file.display())]
    NoTargets { file: PathBuf },

    #[error("no published build of `{target}`")]
    NoPublishedBuild { target: String },

    #[error(
        "no key to verify with: pass --key (a public key file or 64 hex digits), or set \
         [signing] public_key"
    )]
    NoVerifyingKey,

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

    #[error(
        "target `{target}`: `{}` gives no hourly_price, and the run has a spend cap \
         (max_cost): give the price of its instance types",
        builder.display()
    )]
    Unpriced { target: String, builder: PathBuf },

    #[error("{machine} never reached its kernel: {why} (console log: {})", console.display())]
    NeverBooted {
        machine: String,
        why: String,
        console: PathBuf,
    },

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

    /// Taken away from outside runner while in use (a spot reclaim, a terminate by someone
    /// else), as its backend saw it.
    #[error("{machine} was reclaimed during {phase}: {why}")]
    MachineReclaimed {
        machine: String,
        phase: String,
        why: String,
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
    #[error("{what} failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    /// A command-line argument runner cannot use (a key path, a location, a directory).
    #[error("{problem}")]
    BadArgument { problem: String },

    /// A build context runner cannot read as one.
    #[error("build context {}: {problem}", root.display())]
    Context {
        root: PathBuf,
        problem: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A build cache's new generation was not kept.
    #[error("cache `{key}`: {problem}")]
    CacheRefused { key: String, problem: String },

    /// A lock another runner holds, or one that cannot be taken.
    #[error("cannot lock {what}")]
    Lock {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },

    /// QEMU's monitor (QMP) answered otherwise than the protocol says, or not at all.
    #[error("QMP: {problem}")]
    Qmp {
        problem: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A warm-start snapshot could not be made or restored; the machine boots cold instead
    /// where that is possible.
    #[error("{problem}")]
    Snapshot {
        problem: String,
        #[source]
        source: Option<Box<Error>>,
    },

    /// Baking a builder's image failed for a reason of the image or the builder file.
    #[error("builder `{builder}`: {problem}")]
    Bake { builder: String, problem: String },

    /// An EC2 builder cannot get a machine: no region, no image, no capacity, no address.
    #[error("builder `{builder}`: {problem}")]
    Ec2 { builder: String, problem: String },

    /// No AWS region is configured for what needs one.
    #[error(
        "no AWS region for {what}: set `region` in {place}, AWS_REGION, or a region in your AWS profile"
    )]
    NoRegion { what: String, place: &'static str },

    /// A target's settings that cannot work together (a transfer its builder cannot do).
    #[error("target `{target}`: {problem}")]
    TargetSetting { target: String, problem: String },

    /// What `reproduce` refuses: not the recorded script or context, no way to make the
    /// recorded machine again, a rebuild that did not finish.
    #[error("{problem}")]
    NotReproducible {
        problem: String,
        #[source]
        source: Option<Box<Error>>,
    },

    /// This build of runner leaves out what is asked for.
    #[error("{what} needs a runner built with the `{feature}` feature")]
    FeatureMissing { what: String, feature: &'static str },

    #[error(
        "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; \
         pass --mirror URL or set RUNNER_MIRROR"
    )]
    NoMirror,

    #[error("cancelled")]
    Cancelled,

    /// A broken promise of a tool or service runner talks to (an API answer missing a field
    /// it always has, no free loopback port): nothing a user can act on but report it. The
    /// text says which promise.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }

    /// The process exit code this error ends runner with: 3 for a configuration that is
    /// wrong (the message names file, line and key), 4 for everything else.
    pub fn exit_code(&self) -> Exit {
        match self {
            Error::Config(_) | Error::Unpriced { .. } => Exit::Config,
            _ => Exit::Error,
        }
    }

    /// The AWS service error code, if this is an AWS error that carries one.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// runner's exit codes: what every command returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 1: what was asked did not succeed: a target failed, a rebuild differs, a check
    /// failed.
    Failed,
    /// 2: bad command-line usage (clap's code).
    Usage,
    /// 3: runner.toml or a builder file is wrong (the message names file, line and key).
    Config,
    /// 4: anything else that stopped runner: a store or cloud it cannot use, the host.
    Error,
    /// `vm run` and `vm shell`: the command's own status, passed through.
    Passed(u8),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Config => 3,
            Exit::Error => 4,
            Exit::Passed(code) => code.into(),
        }
    }

    pub fn of(ok: bool) -> Exit {
        if ok { Exit::Success } else { Exit::Failed }
    }

    /// A child's exit status as runner's (a signal-killed child: 128 + the signal, as a
    /// shell says it).
    pub fn passed(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255);
        Exit::Passed(u8::try_from(code).unwrap_or(255))
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
