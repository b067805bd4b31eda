//! EC2 machines: RunInstances with per-machine keys in the user data, a dead-man switch, tags
//! that `runner gc` can find, and a teardown that terminates, waits, and deletes the temporary
//! security group. Every resource is written to the machine's record as soon as it exists, so
//! nothing is ever created that a later `runner gc` could not find.

mod api;
pub mod cleanup;
pub mod userdata;

use api::{CAPACITY_ERRORS, tags};
pub use api::{
    Resolved, TAG_EXPIRES, TAG_MACHINE, TAG_OWNER, TAG_RUN, TAG_TARGET, api_error, client,
    hostname, resolve, run_id,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest, InstanceType, IpPermission,
    IpRange, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions,
    VolumeType,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::state::{CloudRecord, MachineRecord, now_unix};
use super::{Backend, Endpoint, Instance, Machine, MachineSpec};
use crate::config::{Address, Ec2Builder};
use crate::error::{Error, IoContext, Result};
use crate::keys::GuestKeys;
use crate::paths::Dirs;

pub struct Ec2Backend {
    client: Client,
    builder: Ec2Builder,
    /// The builder file's name, for messages.
    name: String,
    pub ami: String,
    root_device: String,
    region: String,
    dirs: Dirs,
    limit: Arc<Semaphore>,
}

impl Ec2Backend {
    /// Connects and resolves the AMI (the newest match, when the builder gives a filter).
    pub async fn connect(name: &str, b: &Ec2Builder, dirs: &Dirs) -> Result<Ec2Backend> {
        let r = resolve(name, b).await?;
        Ok(Ec2Backend {
            ami: r.ami,
            root_device: r.root_device,
            limit: builder_limit(name, b.max_instances),
            name: name.to_owned(),
            builder: b.clone(),
            region: r.region,
            client: r.client,
            dirs: dirs.clone(),
        })
    }
}

/// One semaphore per builder for the whole process: `max_instances` caps a run, not a target.
fn builder_limit(name: &str, max: u32) -> Arc<Semaphore> {
    static LIMITS: Mutex<Option<HashMap<String, Arc<Semaphore>>>> = Mutex::new(None);
    LIMITS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(max as usize)))
        .clone()
}

#[async_trait]
impl Backend for Ec2Backend {
    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine> {
        let permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let machines = self.dirs.machines();
        std::fs::create_dir_all(&machines)
            .ctx(|| format!("cannot create state directory `{}`", machines.display()))?;
        let id = super::qemu::new_id();
        let dir = machines.join(&id);
        super::qemu::create_private_dir(&dir)?;
        let mut record = MachineRecord::new(&id, "ec2", &spec.label, 22);
        record.cloud = Some(CloudRecord {
            region: self.region.clone(),
            endpoint: self.builder.endpoint.clone(),
            instance_id: None,
            security_group: None,
            machine_tag: Some(id.clone()),
            owns_group: self.builder.security_group.is_none(),
        });
        // The record goes first: from here on, `runner gc` can find whatever exists.
        record.write(&dir)?;
        let logs = self.dirs.logs();
        std::fs::create_dir_all(&logs)
            .ctx(|| format!("cannot create log directory `{}`", logs.display()))?;
        let mut inst = Ec2Instance {
            client: self.client.clone(),
            dir,
            record,
            console: logs.join(format!("{id}-console.log")),
            _permit: permit,
        };
        // Any error from here on: `inst` is dropped and its guard terminates what exists.
        let expires = now_unix() + self.builder.max_lifetime.as_secs();
        if self.builder.security_group.is_none() {
            let sg = self.temporary_group(&id, &spec.label, expires).await?;
            inst.note(|c| c.security_group = Some(sg))?;
        }
        let user_data = userdata::cloud_config(keys, &self.builder.ssh_user, expires)?;
        let (instance_id, ty) = self
            .run_instance(&id, spec, &inst, &user_data, expires)
            .await?;
        inst.note(|c| c.instance_id = Some(instance_id.clone()))?;
        tracing::info!("{}: launched {instance_id} ({ty})", spec.label);

        let running = self
            .client
            .wait_until_instance_running()
            .instance_ids(&instance_id)
            .wait(spec.boot_timeout)
            .await;
        if let Err(e) = running {
            let err = Error::other(format!(
                "{instance_id} ({}) did not reach `running` within {}s: {}",
                spec.label,
                spec.boot_timeout.as_secs(),
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            ));
            inst.terminate(false).await?;
            return Err(err);
        }
        let host = self.address(&instance_id).await?;
        let endpoint = Endpoint {
            host,
            port: 22,
            user: self.builder.ssh_user.clone(),
        };
        let console = inst.console.clone();
        Ok(Machine::new(id, spec, endpoint, console, Box::new(inst)))
    }
}

impl Ec2Backend {
    async fn temporary_group(&self, id: &str, label: &str, expires: u64) -> Result<String> {
        let vpc = match &self.builder.subnet {
            Some(s) => self
                .client
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| api_error(&format!("DescribeSubnets {s}"), &e))?
                .subnets()
                .first()
                .and_then(|s| s.vpc_id().map(str::to_owned)),
            None => None,
        };
        let group = self
            .client
            .create_security_group()
            .group_name(format!("runner-{id}"))
            .description(format!("runner: SSH to machine {id} ({label}) only"))
            .set_vpc_id(vpc)
            .tag_specifications(tags(ResourceType::SecurityGroup, label, id, expires))
            .send()
            .await
            .map_err(|e| api_error("CreateSecurityGroup", &e))?
            .group_id()
            .ok_or_else(|| Error::other("CreateSecurityGroup returned no group id"))?
            .to_owned();
        let cidr = self.builder.ssh_cidr.clone().unwrap_or_default();
        let rule = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .description("runner")
                    .build(),
            )
            .build();
        let authorized = self
            .client
            .authorize_security_group_ingress()
            .group_id(&group)
            .ip_permissions(rule)
            .send()
            .await;
        if let Err(e) = authorized {
            let _ = self
                .client
                .delete_security_group()
                .group_id(&group)
                .send()
                .await;
            return Err(api_error("AuthorizeSecurityGroupIngress", &e));
        }
        Ok(group)
    }

    /// RunInstances with each instance type in turn until one has capacity.
    async fn run_instance(
        &self,
        id: &str,
        spec: &MachineSpec,
        inst: &Ec2Instance,
        user_data: &str,
        expires: u64,
    ) -> Result<(String, String)> {
        let b = &self.builder;
        let group = b
            .security_group
            .clone()
            .or_else(|| inst.record.cloud.as_ref()?.security_group.clone());
        let mut refused = vec![];
        for (n, ty) in b.instance_types.iter().enumerate() {
            let mut req = self
                .client
                .run_instances()
                .image_id(&self.ami)
                .instance_type(InstanceType::from(ty.as_str()))
                .min_count(1)
                .max_count(1)
                // Idempotent per attempt: a retried request never starts a second machine.
                .client_token(format!("runner-{id}-{n}"))
                .set_subnet_id(b.subnet.clone())
                .set_security_group_ids(group.clone().map(|g| vec![g]))
                .user_data(aws_smithy_types::base64::encode(user_data))
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&self.root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size((b.root_volume.0 >> 30) as i32)
                                .volume_type(VolumeType::Gp3)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                )
                .tag_specifications(tags(ResourceType::Instance, &spec.label, id, expires))
                .tag_specifications(tags(ResourceType::Volume, &spec.label, id, expires));
            if b.spot {
                req = req.instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .spot_options(
                            SpotMarketOptions::builder()
                                .spot_instance_type(SpotInstanceType::OneTime)
                                .instance_interruption_behavior(
                                    InstanceInterruptionBehavior::Terminate,
                                )
                                .build(),
                        )
                        .build(),
                );
            }
            match req.send().await {
                Ok(out) => {
                    let iid = out
                        .instances()
                        .first()
                        .and_then(|i| i.instance_id())
                        .ok_or_else(|| Error::other("RunInstances returned no instance"))?;
                    if !refused.is_empty() {
                        tracing::warn!("{}: no capacity for {refused:?}; using {ty}", spec.label);
                    }
                    return Ok((iid.to_owned(), ty.clone()));
                }
                Err(e) if e.code().is_some_and(|c| CAPACITY_ERRORS.contains(&c)) => {
                    refused.push(format!("{ty}: {}", e.code().unwrap_or_default()));
                }
                Err(e) => {
                    return Err(api_error(
                        &format!("builder `{}`: RunInstances ({ty})", self.name),
                        &e,
                    ));
                }
            }
        }
        Err(Error::other(format!(
            "builder `{}`: no capacity for any instance type: {}",
            self.name,
            refused.join("; ")
        )))
    }

    async fn address(&self, instance_id: &str) -> Result<String> {
        let out = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| api_error(&format!("DescribeInstances {instance_id}"), &e))?;
        let i = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .ok_or_else(|| Error::other(format!("{instance_id} vanished")))?;
        let ip = match self.builder.address {
            Address::Public => i.public_ip_address(),
            Address::Private => i.private_ip_address(),
        };
        ip.map(str::to_owned).ok_or_else(|| {
            Error::other(format!(
                "{instance_id} has no {} address (set `address` in builder `{}`)",
                match self.builder.address {
                    Address::Public => "public",
                    Address::Private => "private",
                },
                self.name
            ))
        })
    }
}

static TEARDOWNS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits for every teardown started from `Drop`.
pub fn join_teardowns() {
    let pending = std::mem::take(&mut *TEARDOWNS.lock().unwrap());
    if !pending.is_empty() {
        eprintln!("runner: waiting for {} EC2 teardown(s)", pending.len());
    }
    for h in pending {
        let _ = h.join();
    }
}

/// A launched EC2 machine. Its record lists every resource that exists; teardown removes
/// them in order (instance, then the group it uses) and only then the record.
struct Ec2Instance {
    client: Client,
    dir: PathBuf,
    record: MachineRecord,
    console: PathBuf,
    _permit: OwnedSemaphorePermit,
}

impl Ec2Instance {
    /// Records a new resource before anything else happens.
    fn note(&mut self, f: impl FnOnce(&mut CloudRecord)) -> Result<()> {
        if let Some(c) = self.record.cloud.as_mut() {
            f(c);
        }
        self.record.write(&self.dir)
    }
}

/// A launch cut short (Ctrl-C while waiting for `running`, an error) drops the instance before
/// any [`Machine`] owns it: this is its teardown then.
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
        cleanup::destroy(&self.client, &cloud, Some(&self.console)).await?;
        // Only a complete teardown forgets the resources; on error the record stays for gc.
        self.record.cloud = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }

    /// From `Drop` (a cancelled launch or task, a panic): the same teardown on a thread of
    /// its own, since no runtime can be borrowed here. Not joined here — many targets
    /// cancelled at once tear down in parallel — but before the process exits
    /// ([`join_teardowns`]).
    fn terminate_now(&mut self) {
        let Some(cloud) = self.record.cloud.take() else {
            return;
        };
        let (console, dir) = (self.console.clone(), self.dir.clone());
        let label = self.record.label.clone();
        let handle = std::thread::spawn(move || {
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
        TEARDOWNS.lock().unwrap().push(handle);
    }

    fn exited(&mut self) -> Option<String> {
        None
    }
}
