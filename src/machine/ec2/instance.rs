//! A launched EC2 machine. Its record lists every resource that exists; teardown removes
//! them in order (instance, then the group it uses) and only then the record.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use tokio::sync::OwnedSemaphorePermit;

use super::fleet::Fleet;
use super::{Resolved, cleanup, client};
use crate::error::Result;
use crate::machine::dir::MachineDir;
use crate::machine::record::{CloudRecord, MachineRecord};
use crate::machine::{Instance, Registry};

pub struct Ec2Instance {
    client: Client,
    dir: PathBuf,
    record: MachineRecord,
    console: PathBuf,
    registry: Arc<Registry>,
    /// Once the instance exists: the run's poller watches it and its terminate is batched.
    fleet: Option<Fleet>,
    _permit: OwnedSemaphorePermit,
}

impl Ec2Instance {
    pub fn new(
        r: &Resolved,
        dir: &MachineDir,
        console: PathBuf,
        permit: OwnedSemaphorePermit,
        registry: Arc<Registry>,
    ) -> Result<Ec2Instance> {
        Ok(Ec2Instance {
            client: r.client.clone(),
            dir: dir.path.clone(),
            record: MachineRecord::read(&dir.path)?,
            console,
            registry,
            fleet: None,
            _permit: permit,
        })
    }

    /// Records a new resource before anything else happens.
    pub fn note(&mut self, f: impl FnOnce(&mut CloudRecord)) -> Result<()> {
        if let Some(c) = self.record.cloud.as_mut() {
            f(c);
        }
        self.record.write(&self.dir)
    }

    /// From now on the instance is the fleet's to watch and to terminate with others.
    pub fn batched(&mut self, fleet: Fleet) {
        self.fleet = Some(fleet);
    }

    pub async fn teardown(&mut self) -> Result<()> {
        self.terminate(false).await
    }
}

/// A launch cut short (Ctrl-C while waiting for `running`, an error) drops the instance before
/// any `Machine` owns it: this is its teardown then.
impl Drop for Ec2Instance {
    fn drop(&mut self) {
        self.terminate_now();
    }
}

#[async_trait]
impl Instance for Ec2Instance {
    async fn terminate(&mut self, _force: bool) -> Result<()> {
        // Cloned, not taken: if this future is dropped half-way (Ctrl-C cancels the task
        // around it), `Drop` still knows what to remove.
        let Some(cloud) = self.record.cloud.clone() else {
            return Ok(());
        };
        match (&self.fleet, &cloud.instance_id) {
            // The success path: its console saved, then one TerminateInstances for every
            // machine of the run ending about now. Its record named nothing else.
            (Some(fleet), Some(id)) => {
                cleanup::save_console(&self.client, id, &self.console).await;
                fleet.terminate(id).await?;
            }
            _ => cleanup::destroy(&self.client, &cloud, Some(&self.console)).await?,
        }
        // Only a complete teardown forgets the resources; on error the record stays for gc.
        self.record.cloud = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }

    /// From `Drop` (a cancelled launch or task, a panic): the same teardown on a thread of
    /// its own, since no runtime can be borrowed here. Not joined here — many targets
    /// cancelled at once tear down in parallel — but by the run before the process exits.
    fn terminate_now(&mut self) {
        let Some(cloud) = self.record.cloud.take() else {
            return;
        };
        // Ours to end now: not a machine taken away.
        if let (Some(fleet), Some(id)) = (&self.fleet, &cloud.instance_id) {
            fleet.unwatch(id);
        }
        let (console, dir) = (self.console.clone(), self.dir.clone());
        let label = self.record.label.clone();
        self.registry.spawn_teardown(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            // A client of this runtime's own: the launch's client pools connections that
            // belong to the other runtime's reactor, and fails from here.
            rt.block_on(async {
                let client = client(Some(&cloud.region), cloud.endpoint.as_deref()).await;
                match cleanup::destroy(&client, &cloud, Some(&console)).await {
                    Ok(()) => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Err(e) => {
                        eprintln!("runner: teardown of {label} failed: {e}; `runner gc` will retry")
                    }
                }
            });
        });
    }

    fn exited(&mut self) -> Option<String> {
        None
    }
}
