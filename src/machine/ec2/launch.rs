//! The API call of one launch: RunInstances across the instance types until one has
//! capacity (the run's group, the wait for `running` and the address are shared with the
//! run's other machines: see [`super::group`] and [`super::fleet`]).

use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest, InstanceType, MarketType,
    ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, VolumeType,
};

use super::Ec2Backend;
use super::api::{NEVER_ERRORS, WAIT_ERRORS, tags};
use super::fleet::Seen;
use crate::aws;
use crate::config::Address;
use crate::error::{Error, Result};
use crate::machine::Waits;

/// The first pause when no type has room, doubled each round up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(30);

pub struct Launcher<'a> {
    pub backend: &'a Ec2Backend,
    pub client: &'a Client,
    pub ami: &'a str,
    pub root_device: &'a str,
    /// The machine id, also its `runner:machine` tag.
    pub id: &'a str,
    pub label: &'a str,
    pub expires: u64,
    /// Spot, unless the builder says otherwise or a reclaim moved this target on-demand.
    pub spot: bool,
}

impl Launcher<'_> {
    /// Launches the first type with room, in the builder's order, and returns the instance
    /// id and its type. When every type is
    /// refused for capacity, quota or throttling, says so through `waits` and goes round
    /// again after a growing pause: the target's timeout (or Ctrl-C) is what ends the wait.
    pub async fn run_instance(
        &self,
        group: String,
        user_data: &str,
        waits: &Waits,
    ) -> Result<(String, String)> {
        let mut pause = FIRST_PAUSE;
        let mut round = 0;
        loop {
            let refused = match self.one_round(round, &group, user_data).await? {
                Ok(launched) => return Ok(launched),
                Err(refused) => refused,
            };
            if refused
                .iter()
                .all(|(_, code)| NEVER_ERRORS.contains(&code.as_str()))
            {
                return Err(self.problem(format!(
                    "no instance type can be launched: {}",
                    list(&refused)
                )));
            }
            waits.tell(
                &format!("no room for any instance type: {}", list(&refused)),
                pause,
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
            round += 1;
        }
    }

    /// Each type once, in order: the instance and its type, or every type's refusal.
    async fn one_round(&self, round: u32, group: &str, user_data: &str) -> Result<Round> {
        let b = &self.backend.builder;
        let mut refused = vec![];
        for (n, ty) in b.instance_types.iter().enumerate() {
            let req = self
                .client
                .run_instances()
                .image_id(self.ami)
                .instance_type(InstanceType::from(ty.as_str()))
                .min_count(1)
                .max_count(1)
                // Idempotent per attempt: a retried request never starts a second machine.
                .client_token(format!("runner-{}-{round}-{n}", self.id))
                .set_subnet_id(b.subnet.clone())
                .security_group_ids(group)
                .user_data(aws_smithy_types::base64::encode(user_data))
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .build(),
                )
                .block_device_mappings(self.root_volume())
                .tag_specifications(self.tags(ResourceType::Instance))
                .tag_specifications(self.tags(ResourceType::Volume))
                .set_instance_market_options(self.spot.then(spot));
            let err = match req.send().await {
                Ok(out) => {
                    let iid = out
                        .instances()
                        .first()
                        .and_then(|i| i.instance_id())
                        .ok_or_else(|| Error::other("RunInstances returned no instance"))?;
                    if !refused.is_empty() {
                        tracing::warn!("{}: {}; using {ty}", self.label, list(&refused));
                    }
                    return Ok(Ok((iid.to_owned(), ty.clone())));
                }
                Err(e) => aws::error(
                    format!("builder `{}`: RunInstances ({ty})", self.backend.name),
                    e,
                ),
            };
            match err.aws_code() {
                Some(code) if WAIT_ERRORS.contains(&code) || NEVER_ERRORS.contains(&code) => {
                    refused.push((ty.clone(), code.to_owned()))
                }
                _ => return Err(err),
            }
        }
        Ok(Err(refused))
    }

    /// The address to connect to, from what the poller saw of the running instance.
    pub fn address(&self, instance_id: &str, seen: &Seen) -> Result<String> {
        let address = self.backend.builder.address;
        let ip = match address {
            Address::Public => seen.public_ip.as_ref(),
            Address::Private => seen.private_ip.as_ref(),
        };
        ip.cloned().ok_or_else(|| {
            self.problem(format!(
                "{instance_id} has no {} address (set `address` in the builder file)",
                match address {
                    Address::Public => "public",
                    Address::Private => "private",
                }
            ))
        })
    }

    /// An error of this builder's EC2 machines.
    fn problem(&self, problem: String) -> Error {
        Error::Ec2 {
            builder: self.backend.name.clone(),
            problem,
        }
    }

    fn tags(&self, kind: ResourceType) -> aws_sdk_ec2::types::TagSpecification {
        tags(kind, self.label, self.id, self.expires)
    }

    fn root_volume(&self) -> BlockDeviceMapping {
        BlockDeviceMapping::builder()
            .device_name(self.root_device)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size((self.backend.builder.root_volume.0 >> 30) as i32)
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .build(),
            )
            .build()
    }
}

/// One-time spot, terminated (never stopped) on interruption.
fn spot() -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .build(),
        )
        .build()
}

/// One round's end: launched (instance id, type), or every type refused (type, AWS code).
type Round = std::result::Result<(String, String), Vec<(String, String)>>;

/// `c5.large: InsufficientInstanceCapacity; t3.micro: VcpuLimitExceeded`.
fn list(refused: &[(String, String)]) -> String {
    let each: Vec<String> = refused
        .iter()
        .map(|(ty, code)| format!("{ty}: {code}"))
        .collect();
    each.join("; ")
}
