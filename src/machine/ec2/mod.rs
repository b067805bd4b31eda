//! EC2 machines: RunInstances with per-machine keys in the user data, a dead-man switch, tags
//! that `runner gc` can find, and a teardown that terminates. What a run's machines share —
//! the temporary security group, the poller that waits for `running` and notices a machine
//! taken away, batched terminations — is made once per builder and run, and removed when the
//! run closes. Every resource is written to a record as soon as it exists, so nothing is
//! ever created that a later `runner gc` could not find.

mod api;
pub mod cleanup;
mod fleet;
mod group;
mod instance;
mod launch;
mod reap;
pub mod sweep;
/// The user data, shared with local cloud images (see [`crate::machine::cloud_init`]).
pub use super::cloud_init as userdata;

pub use api::{
    Resolved, TAG_EXPIRES, TAG_MACHINE, TAG_OWNER, TAG_RUN, TAG_TARGET, client, resolve, run_id,
};

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::{OnceCell, Semaphore};

use self::fleet::Fleet;
use self::group::RunGroup;
use self::instance::Ec2Instance;
use super::dir::MachineDir;
use super::record::{CloudRecord, MachineRecord};
use super::{
    Backend, Cost, Ec2Origin, Lost, Machine, MachineSpec, Origin, Prepared, Registry, Report,
};
use crate::config::Ec2Builder;
use crate::error::{Error, Result};
use crate::guest::{Endpoint, GuestKeys};
use crate::host::now_unix;
use crate::paths::Dirs;

pub struct Ec2Backend {
    /// The builder file's name, for messages.
    name: String,
    builder: Ec2Builder,
    dirs: Dirs,
    registry: Arc<Registry>,
    /// `max_instances`: one backend per builder and run, so this caps the run.
    limit: Arc<Semaphore>,
    /// The client and the AMI, resolved once: every target of a run sees the same AMI.
    resolved: OnceCell<Resolved>,
    /// The run's poller and batched terminations, once the client is known.
    fleet: OnceLock<Fleet>,
    /// The run's temporary security group, when the builder names none.
    group: RunGroup,
}

impl Ec2Backend {
    /// The machine's directory and record, written before anything exists in EC2.
    fn machine_dir(&self, label: &str, region: &str) -> Result<MachineDir> {
        MachineDir::create(&self.dirs, |id| {
            let mut record = MachineRecord::new(id, "ec2", label, 22);
            record.cloud = Some(CloudRecord {
                region: region.to_owned(),
                endpoint: self.builder.endpoint.clone(),
                instance_id: None,
                security_group: None,
                machine_tag: Some(id.to_owned()),
                owns_group: false,
            });
            record
        })
    }

    pub fn new(name: &str, b: &Ec2Builder, dirs: &Dirs, registry: Arc<Registry>) -> Ec2Backend {
        Ec2Backend {
            name: name.to_owned(),
            builder: b.clone(),
            dirs: dirs.clone(),
            registry,
            limit: Arc::new(Semaphore::new(b.max_instances as usize)),
            resolved: OnceCell::new(),
            fleet: OnceLock::new(),
            group: RunGroup::default(),
        }
    }

    fn fleet(&self, r: &Resolved) -> Fleet {
        self.fleet
            .get_or_init(|| Fleet::new(r.client.clone()))
            .clone()
    }

    /// Connects and resolves the AMI (the newest match, when the builder gives a filter).
    async fn resolved(&self) -> Result<&Resolved> {
        self.resolved
            .get_or_try_init(|| resolve(&self.name, &self.builder))
            .await
    }
}

#[async_trait]
impl Backend for Ec2Backend {
    async fn origin(&self) -> Result<Origin> {
        let r = self.resolved().await?;
        Ok(Origin::Ec2(Ec2Origin {
            ami: serde_json::to_value(&self.builder.ami).expect("AMI serializes"),
            image: r.ami.clone(),
            arch: self.builder.arch,
        }))
    }

    async fn prepare(&self, _report: &Report) -> Result<Prepared> {
        let r = self.resolved().await?;
        Ok(Prepared {
            base_image: r.ami.clone(),
            fresh: false,
            location: r.region.clone(),
        })
    }

    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine> {
        let r = self.resolved().await?.clone();
        let permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let expires = now_unix() + self.builder.max_lifetime.as_secs();
        let group = match &self.builder.security_group {
            Some(g) => g.clone(),
            None => {
                let named = (self.name.as_str(), &self.builder);
                let g = self
                    .group
                    .get(&r.client, &r.region, named, &self.dirs, expires);
                g.await?
            }
        };
        let dir = self.machine_dir(&spec.label, &r.region)?;
        let console = dir.console_log(&self.dirs)?;
        let fleet = self.fleet(&r);
        let mut inst = Ec2Instance::new(&r, &dir, console.clone(), permit, self.registry.clone())?;
        // Any error from here on: `inst` is dropped and its guard terminates what exists.
        let launcher = launch::Launcher {
            backend: self,
            client: &r.client,
            ami: &r.ami,
            root_device: &r.root_device,
            id: &dir.id,
            label: &spec.label,
            expires,
            spot: self.builder.spot
                && !(spec.reclaimed > 0 && self.builder.on_demand_after_reclaim),
        };
        let user_data = userdata::cloud_config(
            keys,
            &self.builder.ssh_user,
            expires,
            spec.context_url.as_deref(),
        )?;
        let (instance_id, ty) = launcher
            .run_instance(group, &user_data, &spec.waits)
            .await?;
        inst.note(|c| c.instance_id = Some(instance_id.clone()))?;
        tracing::info!("{}: launched {instance_id} ({ty})", spec.label);
        let lost = Lost::default();
        let mut seen = fleet.watch(&instance_id, lost.clone());
        inst.batched(fleet.clone());
        let running = fleet
            .running(&instance_id, &mut seen, spec.boot_timeout)
            .await;
        let host = match running.and_then(|s| launcher.address(&instance_id, &s)) {
            Ok(host) => host,
            Err(e) => {
                inst.teardown().await?;
                return Err(reclaimed_or(e, &lost, &spec.label, &dir.id));
            }
        };
        let endpoint = Endpoint {
            host,
            port: 22,
            user: self.builder.ssh_user.clone(),
        };
        let mut machine = Machine::new(&dir, spec, endpoint, console, Box::new(inst));
        machine.lost = lost;
        Ok(machine)
    }

    async fn close(&self) -> Result<()> {
        match self.resolved.get() {
            Some(r) => self.group.close(&r.client).await,
            None => Ok(()),
        }
    }

    fn retries_on_reclaim(&self) -> u32 {
        self.builder.retry_on_reclaim
    }

    fn capacity(&self) -> usize {
        self.builder.max_instances as usize
    }

    fn cost(&self) -> Cost {
        self.builder
            .worst_hourly_price()
            .map_or(Cost::Unpriced, Cost::PerHour)
    }

    fn summary(&self) -> String {
        let b = &self.builder;
        let region = b.region.as_deref().unwrap_or("default region");
        let spot = if b.spot { ", spot" } else { "" };
        format!("ec2 {region} {}{spot}", b.instance_types.join(" or "))
    }
}

/// An instance taken away before it ran is a reclaim, as it would be once running; any other
/// failure to run stays what it was.
fn reclaimed_or(e: Error, lost: &Lost, label: &str, id: &str) -> Error {
    match lost.why() {
        Some(why) => Error::MachineReclaimed {
            machine: super::describe(label, id),
            phase: "boot".into(),
            why: why.to_owned(),
        },
        None => e,
    }
}
