//! Where machines come from. The pipeline sees only [`Backend`] and [`Machine`]: it launches,
//! reaches the machine over SSH at its [`Endpoint`], and tears it down, without knowing
//! whether a hypervisor or a cloud is behind it.

pub mod accel;
pub mod ec2;
pub mod qemu;
pub mod qmp;
pub mod registry;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::keys::GuestKeys;

/// What the pipeline asks of a machine, whatever the backend.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// A human label: the builder or target name; shows in logs and `runner gc`.
    pub label: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot_timeout: Duration,
}

/// How to reach a machine over SSH.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// Where machines come from.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts a machine that will accept `keys.client` and present `keys.host`.
    /// Returns once the machine is started, not once it is reachable.
    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine>;
}

/// The backend-specific half of a running machine.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Stops the machine and removes everything it left on the host. `force` skips the
    /// graceful step. Called at most once, by [`Machine`].
    async fn terminate(&mut self, force: bool) -> Result<()>;
    /// The synchronous last resort for `Drop`: kill and remove without waiting politely.
    fn terminate_now(&mut self);
    /// `Some(description)` once the machine has stopped by itself.
    fn exited(&mut self) -> Option<String>;
}

/// A running machine. Teardown runs exactly once: through [`Machine::teardown`], or, if the
/// owner is dropped first (panic, cancelled future), through `Drop`.
pub struct Machine {
    pub id: String,
    pub label: String,
    pub endpoint: Endpoint,
    /// The guest's serial console, kept after teardown for post-mortems.
    pub console_log: PathBuf,
    pub boot_timeout: Duration,
    /// A file and a line that appears in it once the guest's sshd listens. Before that a
    /// handshake attempt only stalls (QEMU's user network accepts TCP for the guest).
    pub ready_hint: Option<(PathBuf, &'static str)>,
    instance: Option<Box<dyn Instance>>,
}

impl Machine {
    pub fn new(
        id: String,
        spec: &MachineSpec,
        endpoint: Endpoint,
        console_log: PathBuf,
        instance: Box<dyn Instance>,
    ) -> Machine {
        Machine {
            id,
            label: spec.label.clone(),
            endpoint,
            console_log,
            boot_timeout: spec.boot_timeout,
            ready_hint: None,
            instance: Some(instance),
        }
    }

    pub fn with_ready_hint(mut self, file: PathBuf, marker: &'static str) -> Machine {
        self.ready_hint = Some((file, marker));
        self
    }

    /// False only while a ready hint exists and has not appeared yet.
    pub fn looks_ready(&self) -> bool {
        self.ready_hint.as_ref().is_none_or(|(file, marker)| {
            std::fs::read(file)
                .is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
    }

    /// A name for messages: `bookworm-amd64 (machine 3f2a9c1e)`.
    pub fn describe(&self) -> String {
        format!("{} (machine {})", self.label, self.id)
    }

    pub fn exited(&mut self) -> Option<String> {
        self.instance.as_mut()?.exited()
    }

    /// Idempotent: the second call does nothing.
    pub async fn teardown(&mut self, force: bool) -> Result<()> {
        match self.instance.take() {
            Some(mut inst) => inst.terminate(force).await,
            None => Ok(()),
        }
    }

    /// Leaves the machine running (for `--keep-failed`); `runner gc` removes it later.
    pub fn keep(&mut self) {
        // Forgotten, not dropped: dropping would run the backend's kill-on-drop safety nets.
        if let Some(inst) = self.instance.take() {
            std::mem::forget(inst);
        }
        registry::unregister(&self.id);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut inst) = self.instance.take() {
            inst.terminate_now();
        }
    }
}
