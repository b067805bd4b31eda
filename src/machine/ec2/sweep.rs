//! What dead runners left in EC2: machines recorded in the state dir whose owner is gone,
//! and — for records lost with a state dir — instances and groups found by runner's tags in
//! the regions of the project's EC2 builders, whose run is gone or whose expiry passed.
//! Untagged resources are never listed.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::cleanup::{self, Tagged};
use super::client;
use super::reap::Reap;
use crate::error::chain;
use crate::leftovers::{Finding, Leftover, Sweeper};
use crate::machine::dir;
use crate::machine::record::{CloudRecord, MachineRecord};
use crate::paths::Dirs;

/// A region and an endpoint.
type Cloud = (String, Option<String>);

pub struct Ec2Sweeper {
    pub dirs: Dirs,
    /// (region, endpoint) of the project's EC2 builders; records add their own.
    pub clouds: Vec<Cloud>,
}

#[async_trait]
impl Sweeper for Ec2Sweeper {
    async fn find(&self) -> Vec<Finding> {
        let mut found = vec![];
        let mut clouds = self.clouds.clone();
        // Ids the records cover: the tag scan leaves those to the record's removal.
        let mut handled = HashSet::new();
        // Orphans by region and endpoint: each lot is removed in one batch.
        let mut orphans: BTreeMap<Cloud, Vec<(MachineRecord, PathBuf)>> = BTreeMap::new();
        for path in dir::all(&self.dirs.machines()) {
            let Ok(r) = MachineRecord::read(&path) else {
                continue;
            };
            let Some(cloud) = r.cloud.clone().filter(|_| r.backend == "ec2") else {
                continue;
            };
            let at = (cloud.region.clone(), cloud.endpoint.clone());
            clouds.push(at.clone());
            handled.extend(cloud.instance_id.clone());
            handled.extend(cloud.security_group.clone());
            handled.extend(cloud.machine_tag.clone());
            if r.orphaned() {
                orphans.entry(at).or_default().push((r, path));
            } else {
                found.push(Finding::Found(Leftover::in_use(r.describe())));
            }
        }
        for ((region, endpoint), lot) in orphans {
            found.extend(batched(region, endpoint, lot));
        }
        clouds.sort();
        clouds.dedup();
        for (region, endpoint) in clouds {
            found.extend(tagged(&region, endpoint.as_deref(), &handled).await);
        }
        found
    }
}

/// A region's orphaned records as leftovers whose removals share one [`Reap`]: the first
/// removal does the whole lot, and each then drops its own record.
fn batched(
    region: String,
    endpoint: Option<String>,
    lot: Vec<(MachineRecord, PathBuf)>,
) -> Vec<Finding> {
    let clouds = lot.iter().filter_map(|(r, _)| r.cloud.clone()).collect();
    let reap = Arc::new(Reap::new(region, endpoint, clouds));
    lot.into_iter()
        .filter_map(|(r, path)| {
            let cloud = r.cloud.clone()?;
            let reap = reap.clone();
            let remove = async move { destroy_recorded(&reap, cloud, path).await };
            Some(Finding::Found(Leftover::orphan(r.describe(), remove)))
        })
        .collect()
}

async fn destroy_recorded(
    reap: &Reap,
    cloud: CloudRecord,
    dir: PathBuf,
) -> crate::error::Result<String> {
    reap.run().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut parts: Vec<String> = cloud.instance_id.iter().cloned().collect();
    parts.extend(
        cloud
            .security_group
            .iter()
            .map(|g| format!("security group {g}")),
    );
    Ok(format!(
        ": terminated {} in {}",
        parts.join(" and "),
        cloud.region
    ))
}

/// Instances and security groups tagged by runner in one region, beyond those local records
/// already cover (`handled`: their ids and machine tags). What may go is removed in one
/// batch, as records are.
async fn tagged(region: &str, endpoint: Option<&str>, handled: &HashSet<String>) -> Vec<Finding> {
    let named = (!region.is_empty()).then_some(region);
    let client = client(named, endpoint).await;
    let found = match cleanup::scan(&client).await {
        Ok(f) => f,
        Err(e) => {
            return vec![Finding::Failed(format!(
                "EC2 scan of {}: {}",
                named.unwrap_or("the default region"),
                chain(&e)
            ))];
        }
    };
    let (removable, live): (Vec<_>, Vec<_>) = found
        .into_iter()
        .filter(|t| !handled.contains(&t.id))
        .filter(|t| t.machine.as_ref().is_none_or(|m| !handled.contains(m)))
        .partition(|t| t.removable());
    let records = removable.iter().map(Tagged::as_record).collect();
    let reap = Arc::new(Reap::new(
        region.to_owned(),
        endpoint.map(str::to_owned),
        records,
    ));
    let mut findings: Vec<Finding> = live
        .iter()
        .map(|t| Finding::Found(Leftover::in_use(t.describe())))
        .collect();
    findings.extend(removable.iter().map(|t| {
        let reap = reap.clone();
        Finding::Found(Leftover::orphan(t.describe(), async move {
            reap.run().await.map(|_| String::new())
        }))
    }));
    findings
}
