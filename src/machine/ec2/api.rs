//! The account side of EC2: clients configured the AWS way, the tags that name a run, AMI
//! resolution, and API errors in one line. Shared by launches, teardowns and `runner gc`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::cleanup;
use crate::config::{Ami, Arch, Ec2Builder};
use crate::error::{Error, Result};
use crate::machine::state::process_start;

/// Tag keys runner puts on everything it creates.
pub const TAG_RUN: &str = "runner:run-id";
pub const TAG_TARGET: &str = "runner:target";
pub const TAG_OWNER: &str = "runner:owner";
pub const TAG_EXPIRES: &str = "runner:expires";
pub const TAG_MACHINE: &str = "runner:machine";

/// Errors that mean "no capacity for this type here and now": try the next type.
pub(super) const CAPACITY_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "Unsupported",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
];

/// This runner process, as tags name it: `<host>:<pid>:<process start>`, so `gc` on the same
/// host can tell a dead run from a live one, and an owner people can ask.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        format!("{}:{pid}:{}", hostname(), process_start(pid).unwrap_or(0))
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn owner() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| // SAFETY: getuid(2) cannot fail.
        unsafe { libc::getuid() }.to_string());
    format!("{user}@{}", hostname())
}

/// An EC2 client the AWS way (env, profile, SSO, web identity, instance metadata), with
/// adaptive retries: throttling slows every caller of this process down instead of failing.
pub async fn client(region: Option<&str>, endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(
        aws_config::retry::RetryConfig::adaptive()
            .with_max_attempts(8)
            .with_initial_backoff(Duration::from_millis(200)),
    );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_owned()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    let shared = loader.load().await;
    Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&shared)
            .interceptor(cleanup::CountCalls)
            .build(),
    )
}

/// A builder's client and image, resolved once per process: every target of a run shares
/// them (one DescribeImages, not one per target) and sees the same AMI.
#[derive(Clone)]
pub struct Resolved {
    pub client: Client,
    pub region: String,
    pub ami: String,
    pub(super) root_device: String,
}

pub async fn resolve(name: &str, b: &Ec2Builder) -> Result<Resolved> {
    static CACHE: tokio::sync::Mutex<Option<HashMap<String, Resolved>>> =
        tokio::sync::Mutex::const_new(None);
    let key = format!("{name}\0{b:?}");
    let mut cache = CACHE.lock().await;
    if let Some(r) = cache.as_ref().and_then(|c| c.get(&key)) {
        return Ok(r.clone());
    }
    let client = client(b.region.as_deref(), b.endpoint.as_deref()).await;
    let region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| {
            Error::other(format!(
                "builder `{name}`: no AWS region (set `region` in the builder, AWS_REGION, or a profile)"
            ))
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
        .map_err(|e| api_error(&format!("builder `{name}`: DescribeImages"), &e))?;
    let newest = images
        .images()
        .iter()
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .ok_or_else(|| {
            Error::other(format!(
                "builder `{name}`: no available {} image matches {:?} in {region}",
                b.arch.debian(),
                b.ami
            ))
        })?;
    let r = Resolved {
        ami: newest.image_id().unwrap_or_default().to_owned(),
        root_device: newest.root_device_name().unwrap_or("/dev/xvda").to_owned(),
        region,
        client,
    };
    cache
        .get_or_insert_with(HashMap::new)
        .insert(key, r.clone());
    Ok(r)
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

/// One line for an API failure: the service's code and message, or the transport's story.
pub fn api_error<E, R>(what: &str, e: &aws_sdk_ec2::error::SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let why = match e
        .as_service_error()
        .and_then(|se| Some((se.code()?, se.message())))
    {
        Some((code, message)) => format!("{code}: {}", message.unwrap_or_default()),
        // No code: a transport failure or an answer that was not an EC2 error document.
        None => aws_sdk_ec2::error::DisplayErrorContext(e).to_string(),
    };
    Error::other(format!("{what} failed: {why}"))
}
