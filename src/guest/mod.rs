//! The guest contract: how runner reaches a machine (SSH with a per-machine client key and a
//! pinned per-machine host key) and what it does there. The context is unpacked in [`SRC`],
//! the script runs there with `RUNNER_OUT` = [`OUT`], and artifacts are taken from [`OUT`].
//!
//! The pipeline talks to a machine only through [`Guest`]; [`ssh::Session`] is the real one.

pub mod cache;
pub mod cache_archive;
mod capped;
mod collect;
pub mod keys;
mod provision;
pub mod ssh;
mod sync;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::artifacts::{ArtifactFile, Limits};
use crate::error::Result;
use crate::logs::LogSink;

pub use keys::GuestKeys;
pub use provision::{Leftovers, Provisioned};
pub use ssh::{Endpoint, ExitStatus, Session};
pub use sync::Delivery;

pub const SRC: &str = "/build/src";
pub const OUT: &str = "/build/out";
/// Where a remote machine may have fetched its context pack while booting (its user data).
pub const PREFETCHED_PACK: &str = "/var/tmp/runner-context.tar.zst";

pub type Input = Box<dyn AsyncRead + Unpin + Send>;
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// A reachable build machine, as the pipeline uses it: one method per step of the contract.
#[async_trait]
pub trait Guest: Send + Sync {
    /// Puts the context pack into [`SRC`] (replacing anything there), as `how` says.
    async fn deliver(&self, how: &Delivery<'_>, log: &LogSink) -> Result<()>;

    /// Uploads and runs the provision script in [`SRC`] with the target's environment,
    /// output to `log`; returns how it ended. Output still held open `leak` after the exit
    /// status arrived is given up on (see [`Provisioned::leftovers`]).
    async fn provision(
        &self,
        script: &[u8],
        env: &[(String, String)],
        leak: Duration,
        log: &LogSink,
    ) -> Result<Provisioned>;

    /// Pulls the artifacts matching `globs` (all files when empty) from [`OUT`] into `dest`,
    /// treating everything the guest sends as hostile.
    /// `compress`: zstd in transit, when the guest has it (remote machines).
    async fn collect(
        &self,
        globs: &[String],
        dest: &Path,
        limits: &Limits,
        compress: bool,
        log: &LogSink,
    ) -> Result<Vec<ArtifactFile>>;

    /// Runs a command line with the caller's streams (`runner vm run`).
    async fn exec(
        &self,
        command: &str,
        stdin: Option<Input>,
        stdout: Output,
        stderr: Output,
    ) -> Result<ExitStatus>;

    /// Says goodbye, never waiting long for a guest that may already be gone.
    async fn close(self: Box<Self>);
}

#[async_trait]
impl Guest for Session {
    async fn deliver(&self, how: &Delivery<'_>, log: &LogSink) -> Result<()> {
        sync::deliver(self, how, log).await
    }

    async fn provision(
        &self,
        script: &[u8],
        env: &[(String, String)],
        leak: Duration,
        log: &LogSink,
    ) -> Result<Provisioned> {
        provision::run_script(self, script, env, leak, log).await
    }

    async fn collect(
        &self,
        globs: &[String],
        dest: &Path,
        limits: &Limits,
        compress: bool,
        log: &LogSink,
    ) -> Result<Vec<ArtifactFile>> {
        collect::collect(self, globs, dest, limits, compress, log).await
    }

    async fn exec(
        &self,
        command: &str,
        stdin: Option<Input>,
        stdout: Output,
        stderr: Output,
    ) -> Result<ExitStatus> {
        Session::exec(self, command, stdin, stdout, stderr).await
    }

    async fn close(self: Box<Self>) {
        Session::close(*self).await
    }
}

/// Single-quotes a value for the guest's POSIX shell.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
