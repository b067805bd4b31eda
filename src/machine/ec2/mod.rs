//! EC2 machines: RunInstances with per-machine keys in the user data, a dead-man switch, tags
//! that `runner gc` can find, and a teardown that terminates, waits, and deletes the temporary
//! security group. Every resource is written to the machine's record as soon as it exists, so
//! nothing is ever created that a later `runner gc` could not find.

mod api;
pub mod cleanup;
mod instance;
mod launch;
pub mod sweep;
/// The user data, shared with local cloud images (see [`crate::machine::cloud_init`]).
pub use super::cloud_init as userdata;

pub use api::{
    Resolved, TAG_EXPIRES, TAG_MACHINE, TAG_OWNER, TAG_RUN, TAG_TARGET, client, resolve, run_id,
};

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{OnceCell, Semaphore};

use self::instance::Ec2Instance;
use super::dir::MachineDir;
use super::record::{CloudRecord, MachineRecord};
use super::{Backend, Cost, Ec2Origin, Machine, MachineSpec, Origin, Prepared, Registry, Report};
use crate::config::Ec2Builder;
use crate::error::Result;
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
}

impl Ec2Backend {
    pub fn new(name: &str, b: &Ec2Builder, dirs: &Dirs, registry: Arc<Registry>) -> Ec2Backend {
        Ec2Backend {
            name: name.to_owned(),
            builder: b.clone(),
            dirs: dirs.clone(),
            registry,
            limit: Arc::new(Semaphore::new(b.max_instances as usize)),
            resolved: OnceCell::new(),
        }
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
        let dir = MachineDir::create(&self.dirs, |id| {
            let mut record = MachineRecord::new(id, "ec2", &spec.label, 22);
            record.cloud = Some(CloudRecord {
                region: r.region.clone(),
                endpoint: self.builder.endpoint.clone(),
                instance_id: None,
                security_group: None,
                machine_tag: Some(id.to_owned()),
                owns_group: self.builder.security_group.is_none(),
            });
            record
        })?;
        let console = dir.console_log(&self.dirs)?;
        let mut inst = Ec2Instance::new(&r, &dir, console.clone(), permit, self.registry.clone())?;
        // Any error from here on: `inst` is dropped and its guard terminates what exists.
        let expires = now_unix() + self.builder.max_lifetime.as_secs();
        let launcher = launch::Launcher {
            backend: self,
            client: &r.client,
            ami: &r.ami,
            root_device: &r.root_device,
            id: &dir.id,
            label: &spec.label,
            expires,
        };
        if self.builder.security_group.is_none() {
            let sg = launcher.temporary_group().await?;
            inst.note(|c| c.security_group = Some(sg))?;
        }
        let user_data = userdata::cloud_config(
            keys,
            &self.builder.ssh_user,
            expires,
            spec.context_url.as_deref(),
        )?;
        let (instance_id, ty) = launcher
            .run_instance(inst.group(), &user_data, &spec.waits)
            .await?;
        inst.note(|c| c.instance_id = Some(instance_id.clone()))?;
        tracing::info!("{}: launched {instance_id} ({ty})", spec.label);
        if let Err(e) = launcher.wait_running(&instance_id, spec.boot_timeout).await {
            inst.teardown().await?;
            return Err(e);
        }
        let endpoint = Endpoint {
            host: launcher.address(&instance_id).await?,
            port: 22,
            user: self.builder.ssh_user.clone(),
        };
        Ok(Machine::new(&dir, spec, endpoint, console, Box::new(inst)))
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
