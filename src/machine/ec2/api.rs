//! The account side of EC2: clients configured the AWS way, the tags that name a run, AMI
//! resolution, and API errors in one line. Shared by launches, teardowns and `runner gc`.

use std::sync::OnceLock;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::cleanup;
use crate::aws::{self, Retries};
use crate::config::{Ami, Arch, Ec2Builder};
use crate::error::{Error, Result};
use crate::host::{Owner, hostname};

/// Tag keys runner puts on everything it creates.
pub const TAG_RUN: &str = "runner:run-id";
pub const TAG_TARGET: &str = "runner:target";
pub const TAG_OWNER: &str = "runner:owner";
pub const TAG_EXPIRES: &str = "runner:expires";
pub const TAG_MACHINE: &str = "runner:machine";

/// Errors that mean "not this type, here and now": try the next type, and when every type
/// was refused so, wait and go round again (until the target's timeout). Quotas free up as
/// other machines end, capacity comes back, throttling passes.
pub(super) const WAIT_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "RequestLimitExceeded",
];

/// Errors that mean "never this type here": try the next; waiting would not help.
pub(super) const NEVER_ERRORS: &[&str] = &["Unsupported", "SpotMaxPriceTooLow"];

/// This runner process, as tags name it: `<host>:<pid>:<process start>`, so `gc` on the same
/// host can tell a dead run from a live one, and an owner people can ask.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let me = Owner::me();
        format!("{}:{}:{}", hostname(), me.pid, me.start)
    })
}

pub(super) fn owner() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| // SAFETY: getuid(2) cannot fail.
        unsafe { libc::getuid() }.to_string());
    format!("{user}@{}", hostname())
}

/// An EC2 client the AWS way (env, profile, SSO, web identity, instance metadata), with
/// adaptive retries unless the user chose others: throttling slows every caller of this
/// process down instead of failing.
pub async fn client(region: Option<&str>, endpoint: Option<&str>) -> Client {
    let shared = aws::config(region, endpoint, Retries::Adaptive { attempts: 8 }).await;
    Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&shared)
            .interceptor(cleanup::CountCalls)
            .build(),
    )
}

/// A builder's client and image, resolved once per run by its backend: every target of a run
/// shares them (one DescribeImages, not one per target) and sees the same AMI.
#[derive(Clone)]
pub struct Resolved {
    pub client: Client,
    pub region: String,
    pub ami: String,
    pub(super) root_device: String,
}

pub async fn resolve(name: &str, b: &Ec2Builder) -> Result<Resolved> {
    let client = client(b.region.as_deref(), b.endpoint.as_deref()).await;
    let region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| Error::NoRegion {
            what: format!("builder `{name}`"),
            place: "the builder file",
        })?;
    let mut q = client
        .describe_images()
        .filters(filter("state", "available"))
        .filters(filter(
            "architecture",
            match b.arch {
                Arch::Amd64 => "x86_64",
                Arch::Arm64 => "arm64",
            },
        ));
    q = match &b.ami {
        Ami::Id(id) => q.image_ids(id),
        Ami::Newest { owner, name } => q.owners(owner).filters(filter("name", name)),
    };
    let images = q
        .send()
        .await
        .map_err(|e| aws::error(format!("builder `{name}`: DescribeImages"), e))?;
    let newest = images
        .images()
        .iter()
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .ok_or_else(|| Error::Ec2 {
            builder: name.to_owned(),
            problem: format!(
                "no available {} image matches {:?} in {region}",
                b.arch.debian(),
                b.ami
            ),
        })?;
    Ok(Resolved {
        ami: newest.image_id().unwrap_or_default().to_owned(),
        root_device: newest.root_device_name().unwrap_or("/dev/xvda").to_owned(),
        region,
        client,
    })
}

pub(super) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub(super) fn tags(
    kind: ResourceType,
    label: &str,
    machine: &str,
    expires: u64,
) -> TagSpecification {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    TagSpecification::builder()
        .resource_type(kind)
        .tags(tag("Name", &format!("runner {label}")))
        .tags(tag(TAG_RUN, run_id()))
        .tags(tag(TAG_TARGET, label))
        .tags(tag(TAG_OWNER, &owner()))
        .tags(tag(TAG_EXPIRES, &expires.to_string()))
        .tags(tag(TAG_MACHINE, machine))
        .build()
}
