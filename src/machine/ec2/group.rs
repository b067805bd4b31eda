//! The run's temporary security group, for a builder that names none: one per builder and
//! run (not one per machine: three calls per run instead of three per machine), allowing SSH
//! from `ssh_cidr` only. Machines of one run share it; the rule admits no traffic between
//! them that it would not admit from anywhere in `ssh_cidr`. It has a record of its own,
//! written before it is created, so a killed run's group is found by `runner gc`; the run
//! deletes it when it closes, after the instances that use it have terminated.

use std::path::PathBuf;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType};
use tokio::sync::OnceCell;

use super::api::tags;
use super::cleanup;
use crate::aws;
use crate::config::Ec2Builder;
use crate::error::{Error, Result};
use crate::machine::dir::MachineDir;
use crate::machine::record::{CloudRecord, MachineRecord};
use crate::paths::Dirs;

/// The group once made, and the record that holds it.
#[derive(Debug)]
struct Made {
    id: String,
    record: PathBuf,
    cloud: CloudRecord,
}

#[derive(Default)]
pub struct RunGroup(OnceCell<Made>);

impl RunGroup {
    /// The group, made by the first launch that asks.
    pub async fn get(
        &self,
        client: &Client,
        region: &str,
        (name, b): (&str, &Ec2Builder),
        dirs: &Dirs,
        expires: u64,
    ) -> Result<String> {
        let made = self
            .0
            .get_or_try_init(|| make(client, region, (name, b), dirs, expires))
            .await?;
        Ok(made.id.clone())
    }

    /// Deletes the group (terminating first any instance still in it), then its record.
    pub async fn close(&self, client: &Client) -> Result<()> {
        let Some(made) = self.0.get() else {
            return Ok(());
        };
        cleanup::destroy(client, &made.cloud, None).await?;
        let _ = std::fs::remove_dir_all(&made.record);
        Ok(())
    }
}

async fn make(
    client: &Client,
    region: &str,
    (name, b): (&str, &Ec2Builder),
    dirs: &Dirs,
    expires: u64,
) -> Result<Made> {
    let label = format!("{name} (security group)");
    let dir = MachineDir::create(dirs, |id| {
        let mut r = MachineRecord::new(id, "ec2", &label, 22);
        r.cloud = Some(CloudRecord {
            region: region.to_owned(),
            endpoint: b.endpoint.clone(),
            instance_id: None,
            security_group: None,
            machine_tag: Some(id.to_owned()),
            owns_group: true,
        });
        r
    })?;
    let vpc = match &b.subnet {
        Some(s) => client
            .describe_subnets()
            .subnet_ids(s)
            .send()
            .await
            .map_err(|e| aws::error(format!("DescribeSubnets {s}"), e))?
            .subnets()
            .first()
            .and_then(|s| s.vpc_id().map(str::to_owned)),
        None => None,
    };
    let group = client
        .create_security_group()
        .group_name(format!("runner-{}", dir.id))
        .description(format!(
            "runner: SSH to the machines of builder {name} in one run"
        ))
        .set_vpc_id(vpc)
        .tag_specifications(tags(ResourceType::SecurityGroup, name, &dir.id, expires))
        .send()
        .await
        .map_err(|e| aws::error("CreateSecurityGroup", e))?
        .group_id()
        .ok_or_else(|| Error::other("CreateSecurityGroup returned no group id"))?
        .to_owned();
    let mut record = MachineRecord::read(&dir.path)?;
    let cloud = record.cloud.as_mut().expect("written above");
    cloud.security_group = Some(group.clone());
    let cloud = cloud.clone();
    record.write(&dir.path)?;
    let made = Made {
        id: group,
        record: dir.path,
        cloud,
    };
    if let Err(e) = allow_ssh(client, &made.id, b).await {
        cleanup::destroy(client, &made.cloud, None).await?;
        let _ = std::fs::remove_dir_all(&made.record);
        return Err(e);
    }
    Ok(made)
}

async fn allow_ssh(client: &Client, group: &str, b: &Ec2Builder) -> Result<()> {
    let rule = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(
            IpRange::builder()
                .cidr_ip(b.ssh_cidr.clone().unwrap_or_default())
                .description("runner")
                .build(),
        )
        .build();
    client
        .authorize_security_group_ingress()
        .group_id(group)
        .ip_permissions(rule)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws::error("AuthorizeSecurityGroupIngress", e))
}
