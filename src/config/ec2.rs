//! The `ec2` backend's builder files: where cloud machines come from, with explicit limits.
//! A builder names no credentials: those come from the standard AWS chain at run time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::size::GIB;
use super::value::{self, Example, Range};
use super::{Arch, ConfigError, Size, Source};

/// An EC2 machine definition.
#[derive(Debug, Clone, Serialize)]
pub struct Ec2Builder {
    /// Else the AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// An EC2-compatible endpoint; else `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    pub ami: Ami,
    pub arch: Arch,
    /// Tried in order: a type without capacity falls through to the next.
    pub instance_types: Vec<String>,
    pub subnet: Option<String>,
    /// An existing security group; without one, runner creates a temporary group for the
    /// run that allows SSH from `ssh_cidr` only, and deletes it when the run ends.
    pub security_group: Option<String>,
    pub ssh_cidr: Option<String>,
    pub root_volume: Size,
    pub spot: bool,
    pub ssh_user: String,
    /// Which address runner connects to.
    pub address: Address,
    /// The dead-man switch: the instance powers itself off (and so terminates) this long
    /// after launch, whatever runner does.
    pub max_lifetime: Duration,
    pub boot_timeout: Duration,
    /// At most this many instances of this builder at once, across a run's targets.
    pub max_instances: u32,
    /// What an hour of each of `instance_types` costs, in US dollars (`hourly_price`: one
    /// price for all, or a table by type). Empty: not priced (a spend cap refuses the run).
    pub hourly_price: BTreeMap<String, f64>,
    /// A target whose machine is taken away (a spot reclaim) starts again on a fresh machine
    /// this many times.
    pub retry_on_reclaim: u32,
    /// After a reclaim, the target's next machine is on-demand, not spot.
    pub on_demand_after_reclaim: bool,
}

impl Ec2Builder {
    /// The most an hour of this builder's machine can cost: the dearest type it may fall
    /// back to. `None`: not priced.
    pub fn worst_hourly_price(&self) -> Option<f64> {
        self.instance_types
            .iter()
            .map(|t| self.hourly_price.get(t).copied())
            .try_fold(0.0_f64, |worst, p| Some(worst.max(p?)))
    }
}

/// `hourly_price = 0.0104`, or `hourly_price = { "t3.micro" = 0.0104, "c5.large" = 0.085 }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    All(f64),
    ByType(BTreeMap<String, f64>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ami {
    Id(String),
    /// The newest available image of `owner` whose name matches `name` (wildcards `*`, `?`).
    Newest {
        owner: String,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Address {
    Public,
    Private,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEc2 {
    #[allow(dead_code)]
    backend: String,
    /// Read by [`super::Builder::load`] (every backend takes it alike).
    #[allow(dead_code)]
    #[serde(default)]
    cache: Vec<toml::Value>,
    region: Option<String>,
    endpoint: Option<String>,
    ami: Option<Spanned<String>>,
    ami_owner: Option<String>,
    ami_name: Option<String>,
    #[serde(default = "amd64")]
    arch: Arch,
    instance_types: Spanned<Vec<String>>,
    subnet: Option<String>,
    security_group: Option<String>,
    ssh_cidr: Option<Spanned<String>>,
    root_volume: Option<Spanned<Size>>,
    #[serde(default)]
    spot: bool,
    ssh_user: Option<Spanned<String>>,
    address: Option<Address>,
    max_lifetime: Option<Spanned<String>>,
    boot_timeout: Option<Spanned<String>>,
    max_instances: Option<Spanned<u32>>,
    hourly_price: Option<Spanned<RawPrice>>,
    retry_on_reclaim: Option<Spanned<u32>>,
    #[serde(default)]
    on_demand_after_reclaim: bool,
}

fn amd64() -> Arch {
    Arch::Amd64
}

const ROOT_VOLUME: Range<Size> = Range {
    min: Size(GIB),
    max: Size(16 * 1024 * GIB),
};
const LIFETIME: Range<Duration> = Range {
    min: Duration::from_secs(1),
    max: Duration::from_secs(24 * 3600),
};
const INSTANCES: Range<u32> = Range { min: 1, max: 1000 };
const RECLAIM_RETRIES: Range<u32> = Range { min: 0, max: 10 };

impl Ec2Builder {
    pub(super) fn from_raw(src: &Source, mut raw: RawEc2) -> Result<Ec2Builder, ConfigError> {
        let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
        let ami = ami(
            src,
            raw.ami.take(),
            raw.ami_owner.take(),
            raw.ami_name.take(),
        )?;
        let types = raw.instance_types.get_ref();
        if types.is_empty() || types.len() > 20 || types.iter().any(|t| !is_instance_type(t)) {
            return Err(bad(
                raw.instance_types.span(),
                "instance_types",
                "a list of 1 to 20 instance types like \"c7a.large\"".into(),
            ));
        }
        ssh_source(src, &raw)?;
        let root_volume = value::size(
            src,
            raw.root_volume.as_ref(),
            "root_volume",
            ROOT_VOLUME,
            Size(20 * GIB),
        )?;
        let ssh_user = match raw.ssh_user {
            None => "root".to_owned(),
            Some(u) if is_user_name(u.get_ref()) => u.into_inner(),
            Some(u) => return Err(bad(u.span(), "ssh_user", "not a user name".into())),
        };
        let max_lifetime = value::duration(
            src,
            raw.max_lifetime.as_ref(),
            "max_lifetime",
            (LIFETIME, Example("2h")),
            Duration::from_secs(3 * 3600),
        )?;
        let boot_timeout = value::duration(
            src,
            raw.boot_timeout.as_ref(),
            "boot_timeout",
            (value::BOOT_TIMEOUT, Example("10m")),
            Duration::from_secs(600),
        )?;
        let max_instances = value::count(
            src,
            raw.max_instances.as_ref(),
            "max_instances",
            INSTANCES,
            20,
        )?;
        Ok(Ec2Builder {
            region: raw.region,
            endpoint: raw.endpoint,
            ami,
            arch: raw.arch,
            instance_types: types.clone(),
            subnet: raw.subnet,
            security_group: raw.security_group,
            ssh_cidr: raw.ssh_cidr.map(Spanned::into_inner),
            root_volume,
            spot: raw.spot,
            ssh_user,
            address: raw.address.unwrap_or(Address::Public),
            max_lifetime,
            boot_timeout,
            max_instances,
            hourly_price: prices(src, raw.hourly_price.as_ref(), types)?,
            retry_on_reclaim: value::count(
                src,
                raw.retry_on_reclaim.as_ref(),
                "retry_on_reclaim",
                RECLAIM_RETRIES,
                1,
            )?,
            on_demand_after_reclaim: raw.on_demand_after_reclaim,
        })
    }
}

/// Every listed type priced, within [`value::PRICE`]; a table naming a type the builder
/// does not list is a typo.
fn prices(
    src: &Source,
    raw: Option<&Spanned<RawPrice>>,
    types: &[String],
) -> Result<BTreeMap<String, f64>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(BTreeMap::new());
    };
    let bad = |msg: String| src.error_at(Some(raw.span()), Some("hourly_price".into()), msg);
    let table = match raw.get_ref() {
        RawPrice::All(p) => types.iter().map(|t| (t.clone(), *p)).collect(),
        RawPrice::ByType(t) => t.clone(),
    };
    let range = value::PRICE;
    for (ty, p) in &table {
        if !types.contains(ty) {
            return Err(bad(format!("`{ty}` is not one of instance_types")));
        }
        if !(range.min..=range.max).contains(p) {
            return Err(bad(format!(
                "`{ty}`: a price between {} and {} dollars an hour",
                range.min, range.max
            )));
        }
    }
    if let Some(missing) = types.iter().find(|t| !table.contains_key(*t)) {
        return Err(bad(format!("no price for `{missing}`")));
    }
    Ok(table)
}

/// Without `security_group`, runner makes a temporary one open to `ssh_cidr` only.
fn ssh_source(src: &Source, raw: &RawEc2) -> Result<(), ConfigError> {
    let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
    if raw.security_group.is_none() && raw.ssh_cidr.is_none() {
        return Err(src.error_at(
                None,
                Some("ssh_cidr".into()),
                "missing: without `security_group`, runner creates a temporary one that allows \
                 SSH only from `ssh_cidr` (the address runner connects from, e.g. \"203.0.113.7/32\")"
                    .to_owned(),
            ));
    }
    if let Some(c) = &raw.ssh_cidr
        && c.get_ref().parse::<ipnet_like::Cidr>().is_err()
    {
        return Err(bad(
            c.span(),
            "ssh_cidr",
            format!(
                "`{}` is not an IPv4 CIDR like \"203.0.113.7/32\"",
                c.get_ref()
            ),
        ));
    }
    Ok(())
}

/// `ami = "ami-…"`, or `ami_owner` + `ami_name` for the newest match.
fn ami(
    src: &Source,
    id: Option<Spanned<String>>,
    owner: Option<String>,
    name: Option<String>,
) -> Result<Ami, ConfigError> {
    let bad = |span, msg: &str| src.error_at(Some(span), Some("ami".into()), msg.to_owned());
    match (id, owner, name) {
        (Some(id), None, None) if id.get_ref().starts_with("ami-") => Ok(Ami::Id(id.into_inner())),
        (Some(id), None, None) => Err(bad(id.span(), "an AMI id starts with `ami-`")),
        (None, Some(owner), Some(name)) => Ok(Ami::Newest { owner, name }),
        (Some(id), _, _) => Err(bad(
            id.span(),
            "give either `ami` or `ami_owner` + `ami_name`, not both",
        )),
        _ => Err(src.error_at(
            None,
            Some("ami".into()),
            "missing: set `ami = \"ami-…\"`, or `ami_owner` and `ami_name` (newest match)",
        )),
    }
}

fn is_instance_type(s: &str) -> bool {
    s.len() <= 32
        && s.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        })
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

/// An IPv4 CIDR, checked here so a typo fails at load rather than at the EC2 API.
mod ipnet_like {
    pub struct Cidr;
    impl std::str::FromStr for Cidr {
        type Err = ();
        fn from_str(s: &str) -> Result<Cidr, ()> {
            let (ip, len) = s.split_once('/').ok_or(())?;
            ip.parse::<std::net::Ipv4Addr>().map_err(|_| ())?;
            match len.parse::<u8>() {
                Ok(0..=32) => Ok(Cidr),
                _ => Err(()),
            }
        }
    }
}
