//! A machine leased for one target: launched, reachable over SSH with its own keys, and torn
//! down on every way out.

use tokio_util::sync::CancellationToken;

use super::{Backend, Machine, MachineSpec, dir};
use crate::error::{Error, Result};
use crate::guest::{Guest, GuestKeys};

/// A machine, its guest and its keys, from launch until teardown.
pub struct Lease {
    pub machine: Machine,
    pub guest: Box<dyn Guest>,
    pub keys: GuestKeys,
}

/// Launches and waits for the guest. On any failure or cancellation the machine is already
/// torn down when this returns.
pub async fn lease(
    backend: &dyn Backend,
    spec: &MachineSpec,
    cancel: &CancellationToken,
) -> Result<Lease> {
    let keys = GuestKeys::generate()?;
    let mut machine = tokio::select! {
        m = backend.launch(spec, &keys) => m?,
        _ = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let lost = machine.lost.clone();
    let connected = tokio::select! {
        g = machine.connect(&keys) => g,
        _ = cancel.cancelled() => Err(Error::Cancelled),
        why = lost.wait() => Err(Error::MachineReclaimed {
            machine: machine.describe(),
            phase: "boot".into(),
            why,
        }),
    };
    match connected {
        Ok(guest) => Ok(Lease {
            machine,
            guest,
            keys,
        }),
        Err(e) => {
            // Even when cancelled: the first signal means an orderly teardown (QMP quit, then
            // kill); a second signal never gets here, it kills everything and exits.
            machine.teardown(false).await?;
            Err(e)
        }
    }
}

impl Lease {
    /// Closes the guest connection and tears the machine down; a forced teardown skips
    /// politeness.
    pub async fn release(mut self, force: bool) -> Result<()> {
        if !force {
            self.guest.close().await;
        }
        self.machine.teardown(force).await
    }

    /// Writes a client key and a pinned `known_hosts` into `dir` (inside the machine's
    /// directory, so they go with it) and returns the OpenSSH command line that uses them.
    pub fn ssh_access(&self, dir: &std::path::Path) -> Result<dir::SshAccess> {
        dir::SshAccess::write(dir, &self.keys, &self.machine.endpoint)
    }
}
