//! What happens during a build, as data. The orchestrator and the per-target pipeline only
//! emit [`Event`]s; how they are shown (progress bars, plain lines, JSON lines for CI) is the
//! business of `progress`, so the pipeline never formats output itself.

use std::path::PathBuf;

use serde::Serialize;

/// The stages a target goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for a slot (`-j`).
    Queued,
    /// Ensuring the base image (baking it if needed).
    Image,
    /// Launching the machine and waiting for SSH.
    Boot,
    /// Streaming the build context into the guest.
    Sync,
    /// Running the provision script.
    Provision,
    /// Pulling artifacts back.
    Collect,
    /// Sealing the build cache's next generation (committed once published).
    Cache,
    /// Moving artifacts into the store.
    Publish,
    /// Tearing the machine down.
    Teardown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Image => "image",
            Phase::Boot => "boot",
            Phase::Sync => "sync",
            Phase::Provision => "provision",
            Phase::Collect => "collect",
            Phase::Cache => "cache",
            Phase::Publish => "publish",
            Phase::Teardown => "teardown",
        }
    }
}

/// How a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    /// Not rebuilt: a published build with the same inputs digest exists (see `--force`).
    Cached,
    Failed,
    /// Stopped by Ctrl-C/SIGTERM (a timeout is a failure).
    Cancelled,
    /// Not started because an earlier target failed (without `--keep-going`).
    Skipped,
}

impl Outcome {
    /// Succeeded or cached: the target's artifacts are there.
    pub fn ok(self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Cached)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Cached => "cached",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Why a target failed (or was cancelled), as data: the summary and tooling read this
/// instead of parsing the error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The provision script exited non-zero (see `exit_code`).
    Script,
    /// The target's deadline passed.
    Timeout,
    /// The machine stopped by itself (powered off, panicked, its hypervisor was killed).
    MachineDied,
    /// The machine was taken away from outside (a spot reclaim) and no retry was left.
    MachineReclaimed,
    /// Ctrl-C / SIGTERM.
    Cancelled,
    /// What the guest sent back was refused (hostile, over a limit, not asked for).
    ArtifactRefused,
    /// Not launched: its machine's worst case would take the run past its spend cap.
    SpendCap,
    /// A bug: the target's task panicked. Its machine was still torn down.
    Panic,
    /// Anything else: configuration, the store, the network, the host.
    Error,
}

/// The final record of one target, shown in the summary and sent as the last event.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub outcome: Outcome,
    /// The phase the target was in when it ended (`publish` or `teardown` on success).
    pub phase: Phase,
    pub seconds: f64,
    /// Published artifact paths (empty unless succeeded).
    pub artifacts: Vec<PathBuf>,
    pub log: PathBuf,
    /// The provision script's exit code, when it ran and failed.
    pub exit_code: Option<i32>,
    /// Why it did not succeed; `None` when it did (or was skipped).
    pub failure: Option<FailureKind>,
    /// What went wrong: target, phase, cause, exit code, log path, the log's last lines.
    pub error: Option<String>,
    /// Bytes of guest output left out of the log (its head and tail are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_truncated: Option<u64>,
    /// sha256 digest of the build context as sent (see `context::Context::digest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_digest: Option<String>,
}

/// A step of making a base image on first use: a cloud image's download, verification,
/// customising boot and what runs in it; runner's own bake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStep {
    Download,
    Verify,
    Boot,
    CloudInit,
    Packages,
    BakeScript,
    Seal,
    /// runner's own image, from Debian packages (its steps are in `detail`).
    Bake,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run starts: every target it will try, in order.
    RunStarted { targets: Vec<String>, jobs: usize },
    /// A target entered a phase.
    Phase {
        target: String,
        phase: Phase,
        seconds: f64,
    },
    /// A step of making the target's base image began (the `image` phase): which step, what
    /// it is doing, seconds since the image phase began.
    ImageStep {
        target: String,
        step: ImageStep,
        detail: String,
        seconds: f64,
    },
    /// The target's machine cannot start yet and runner waits (a cloud's quota, throttling or
    /// capacity): why, and how long until the next try.
    Waiting {
        target: String,
        reason: String,
        retry_in_seconds: f64,
    },
    /// The target's machine was taken away from outside (a spot reclaim, a terminate by
    /// someone else); `retrying`: the target starts again on a fresh machine.
    MachineReclaimed {
        target: String,
        machine: String,
        reason: String,
        retrying: bool,
    },
    /// The target's machine is up: which one, and how it started (`warm (snapshot …)`,
    /// `cold`, or `cold (why not warm)`; empty where a backend has one way only).
    Machine {
        target: String,
        machine: String,
        start: String,
    },
    /// A boot phase of the target's machine ended (`firmware+kernel`, `initrd`, `init`,
    /// `sshd`, `ssh`; warm starts: `restore`, `identity`), seconds since it started.
    Boot {
        target: String,
        phase: String,
        seconds: f64,
    },
    /// The target's context pack: made now, or reused (another target or run made it).
    Packed {
        target: String,
        digest: String,
        made: bool,
        bytes: u64,
    },
    /// The latest line of the provision script's output (for the progress line).
    Output { target: String, line: String },
    /// Bytes of a target's artifacts stored so far while publishing to a remote store.
    Transfer {
        target: String,
        bytes: u64,
        total: u64,
        /// Since the transfer started, so a viewer can show the rate.
        seconds: f64,
    },
    /// A target ended; exactly one per target.
    Finished(TargetResult),
    /// The run ended.
    RunFinished {
        succeeded: usize,
        cached: usize,
        failed: usize,
        cancelled: usize,
        skipped: usize,
        seconds: f64,
    },
}

/// Where events go. Cloneable and cheap; sending never blocks the pipeline.
#[derive(Clone)]
pub struct Emitter(tokio::sync::mpsc::UnboundedSender<Event>);

impl Emitter {
    pub fn channel() -> (Emitter, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Emitter(tx), rx)
    }

    pub fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }
}
