//! A running QEMU machine: its process (in a group of its own) and its directory. Teardown
//! asks QEMU to quit over QMP, kills the process group if it lingers, and removes the
//! directory but keeps the console log beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::Child;

use super::qmp::Qmp;
use crate::error::{IoContext, Result};
use crate::host::kill_processes_mentioning;
use crate::machine::{Instance, Registry};

/// How long QEMU gets to quit over QMP before its process group is killed.
const GRACE: Duration = Duration::from_secs(3);

pub struct QemuInstance {
    pub id: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub registry: Arc<Registry>,
    /// A warm machine's seed port, open until teardown.
    pub seed_port: Option<tokio::net::UnixStream>,
}

impl QemuInstance {
    /// Lets the run's forced-exit path kill this machine without its task.
    pub fn register(&self) {
        let (pgid, dir) = (self.child.as_ref().and_then(Child::id), self.dir.clone());
        self.registry.register(&self.id, move || {
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(&dir);
        });
    }

    /// Whether QEMU has exited already.
    pub fn exited_now(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    fn remove(&mut self) {
        // Anything else that still names the directory is a leftover of this machine.
        kill_processes_mentioning(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove `{}`: {e}", self.dir.display());
        }
        self.registry.unregister(&self.id);
    }
}

#[async_trait]
impl Instance for QemuInstance {
    async fn terminate(&mut self, force: bool) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let done = !force && quit_politely(&self.dir.join("qmp.sock"), &mut child).await;
            if !done {
                kill_group(&child);
                let _ = child.wait().await;
            }
        }
        self.remove();
        Ok(())
    }

    fn terminate_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child);
            let _ = child.start_kill();
        }
        self.remove();
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status.to_string())
    }
}

/// A launch cut short (an error, a cancelled future) drops the instance before any
/// `Machine` owns it: this is its teardown then. Idempotent with the others.
impl Drop for QemuInstance {
    fn drop(&mut self) {
        if self.child.is_some() || self.dir.exists() {
            self.terminate_now();
        }
    }
}

/// The VM is disposable, so `quit` (not an ACPI powerdown) is the graceful path: QEMU
/// flushes and exits; the guest's state is thrown away anyway.
async fn quit_politely(socket: &Path, child: &mut Child) -> bool {
    let quit = async {
        let mut qmp = Qmp::connect(socket).await?;
        let _ = qmp.execute("quit", json!({})).await;
        child.wait().await.ctx(|| "cannot wait for QEMU")
    };
    tokio::time::timeout(GRACE, quit)
        .await
        .is_ok_and(|r| r.is_ok())
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}
