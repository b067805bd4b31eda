//! Removing EC2 resources: one machine's (its teardown, or `gc` from its record), and what a
//! tag scan finds that no live run owns. Idempotent: what is already gone counts as removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::operation::describe_instances::builders::DescribeInstancesFluentBuilder;
use aws_sdk_ec2::types::{Filter, Instance};
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use super::{TAG_EXPIRES, TAG_MACHINE, TAG_RUN};
use crate::aws;
use crate::error::{Error, Result};
use crate::host::{Owner, hostname, now_unix};
use crate::machine::record::CloudRecord;

/// How long to wait for an instance to reach `terminated`.
pub(super) const TERMINATE_WAIT: Duration = Duration::from_secs(600);
/// A group can still be in use for a while after its instance terminated.
const GROUP_RETRY: Duration = Duration::from_secs(180);

static API_CALLS: AtomicU64 = AtomicU64::new(0);
static BY_OPERATION: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts EC2 API requests (retries included) in all and by operation, for the scale
/// benchmark and the fleet tests. Process-wide on purpose: it counts what this process
/// asked of the API, whichever run or client asked.
#[derive(Debug)]
pub struct CountCalls;

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), aws_sdk_ec2::error::BoxError> {
        API_CALLS.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = cfg.load::<Metadata>() {
            *BY_OPERATION
                .lock()
                .unwrap()
                .entry(m.name().to_owned())
                .or_default() += 1;
        }
        Ok(())
    }
}

pub fn api_calls() -> u64 {
    API_CALLS.load(Ordering::Relaxed)
}

/// Requests so far by operation (`RunInstances`, `DescribeInstances`, …).
pub fn api_calls_by_operation() -> BTreeMap<String, u64> {
    BY_OPERATION.lock().unwrap().clone()
}

/// Codes that mean "already gone": removing it again is done.
pub(super) fn gone(e: &Error) -> bool {
    e.aws_code()
        .is_some_and(|c| c.starts_with("InvalidInstanceID") || c.starts_with("InvalidGroup"))
}

/// Terminates the instance (saving its console output first), waits until it is terminated,
/// then deletes the temporary security group. Resources whose ids were never recorded are
/// found by the machine tag.
pub async fn destroy(client: &Client, cloud: &CloudRecord, console: Option<&Path>) -> Result<()> {
    let mut instances: Vec<String> = cloud.instance_id.iter().cloned().collect();
    let mut groups: Vec<String> = cloud.security_group.iter().cloned().collect();
    // Only what may exist without a recorded id is searched for (a search is an API call).
    if let Some(tag) = &cloud.machine_tag {
        let want_instances = instances.is_empty();
        let want_groups = groups.is_empty() && cloud.owns_group;
        if want_instances || want_groups {
            let (i, g) = by_machine_tag(client, tag, want_instances, want_groups).await?;
            instances.extend(i);
            groups.extend(g);
        }
    }
    instances.sort();
    instances.dedup();
    groups.sort();
    groups.dedup();
    // A group runner made for a run: whatever still uses it goes first.
    if cloud.owns_group && cloud.instance_id.is_none() && !groups.is_empty() {
        instances.extend(in_groups(client, &groups).await?);
    }
    for id in &instances {
        if let Some(path) = console {
            save_console(client, id, path).await;
        }
        match client.terminate_instances().instance_ids(id).send().await {
            Ok(_) => {}
            Err(e) => match aws::error(format!("TerminateInstances {id}"), e) {
                e if gone(&e) => {}
                e => return Err(e),
            },
        }
    }
    if !instances.is_empty() {
        client
            .wait_until_instance_terminated()
            .set_instance_ids(Some(instances.clone()))
            .wait(TERMINATE_WAIT)
            .await
            .map_err(|e| Error::Aws {
                context: format!("waiting for {} to terminate", instances.join(", ")),
                code: None,
                summary: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                source: Box::new(e),
            })?;
    }
    for group in &groups {
        delete_group(client, group).await?;
    }
    Ok(())
}

/// Keeps what the instance printed on its console (best effort: it is for post-mortems).
pub async fn save_console(client: &Client, id: &str, path: &Path) {
    if let Ok(out) = client.get_console_output().instance_id(id).send().await
        && let Some(text) = out.output()
        && let Ok(bytes) = aws_smithy_types::base64::decode(text)
    {
        let _ = std::fs::write(path, bytes);
    }
}

/// Instances not yet terminated (shutting-down included: the group waits for them) in
/// any of `groups`.
pub(super) async fn in_groups(client: &Client, groups: &[String]) -> Result<Vec<String>> {
    let request = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name("instance.group-id")
                .set_values(Some(groups.to_vec()))
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "shutting-down", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        );
    instance_ids(request, |_| true).await
}

/// The ids of the instances a DescribeInstances request finds, every page of them, that
/// `keep` accepts.
pub(super) async fn instance_ids(
    request: DescribeInstancesFluentBuilder,
    keep: impl Fn(&Instance) -> bool,
) -> Result<Vec<String>> {
    let mut found = vec![];
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws::error("DescribeInstances", e))?;
        found.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| keep(i))
                .filter_map(|i| i.instance_id().map(str::to_owned)),
        );
    }
    Ok(found)
}

/// Live instances and groups carrying this `runner:machine` tag (only the kinds asked for:
/// each search is an API call).
async fn by_machine_tag(
    client: &Client,
    tag: &str,
    want_instances: bool,
    want_groups: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let by_tag = || {
        Filter::builder()
            .name(format!("tag:{TAG_MACHINE}"))
            .values(tag)
            .build()
    };
    let mut instances = vec![];
    if want_instances {
        let out = client
            .describe_instances()
            .filters(by_tag())
            .filters(not_terminated())
            .send()
            .await
            .map_err(|e| aws::error("DescribeInstances", e))?;
        instances.extend(
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id().map(str::to_owned)),
        );
    }
    let mut groups = vec![];
    if want_groups {
        let out = client
            .describe_security_groups()
            .filters(by_tag())
            .send()
            .await
            .map_err(|e| aws::error("DescribeSecurityGroups", e))?;
        groups.extend(
            out.security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned)),
        );
    }
    Ok((instances, groups))
}

/// Instances that still exist (or may come back: a stopped one can be started).
pub(super) fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .build()
}

pub(super) async fn delete_group(client: &Client, group: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + GROUP_RETRY;
    loop {
        let e = match client.delete_security_group().group_id(group).send().await {
            Ok(_) => return Ok(()),
            Err(e) => aws::error(format!("DeleteSecurityGroup {group}"), e),
        };
        let in_use = e.aws_code() == Some("DependencyViolation");
        if gone(&e) {
            return Ok(());
        } else if in_use && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(5)).await;
        } else {
            return Err(e);
        }
    }
}

/// What a tag scan found: resources some runner created, and whether their run is over.
#[derive(Debug)]
pub struct Tagged {
    pub kind: &'static str,
    pub id: String,
    pub run: String,
    /// Its `runner:machine` tag: the record that covers it, if that is still here.
    pub machine: Option<String>,
    pub expired: bool,
    pub run_dead: bool,
}

impl Tagged {
    pub fn removable(&self) -> bool {
        self.expired || self.run_dead
    }

    /// As a record of what to remove: an instance, or a group a run made.
    pub fn as_record(&self) -> CloudRecord {
        let instance = self.kind == "instance";
        CloudRecord {
            region: String::new(),
            endpoint: None,
            instance_id: instance.then(|| self.id.clone()),
            security_group: (!instance).then(|| self.id.clone()),
            machine_tag: None,
            owns_group: !instance,
        }
    }

    pub fn describe(&self) -> String {
        let why = match (self.run_dead, self.expired) {
            (true, _) => "run gone",
            (false, true) => "expired",
            _ => "run live",
        };
        format!("{} {} (run {}, {why})", self.kind, self.id, self.run)
    }
}

/// A run of this host whose process is gone; runs of other hosts are judged by expiry only.
fn run_dead(run: &str) -> bool {
    let mut parts = run.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => !Owner { pid, start }.alive(),
        _ => false,
    }
}

fn judge(kind: &'static str, id: &str, tags: &[aws_sdk_ec2::types::Tag]) -> Option<Tagged> {
    let get = |k: &str| {
        tags.iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
    };
    let run = get(TAG_RUN)?.to_owned();
    let expired = get(TAG_EXPIRES)
        .and_then(|e| e.parse::<u64>().ok())
        .is_some_and(|e| e <= now_unix());
    Some(Tagged {
        kind,
        id: id.to_owned(),
        run_dead: run_dead(&run),
        run,
        machine: get(TAG_MACHINE).map(str::to_owned),
        expired,
    })
}

/// Every live instance and security group that carries runner's run tag.
pub async fn scan(client: &Client) -> Result<Vec<Tagged>> {
    let mut found = vec![];
    let mut pages = client
        .describe_instances()
        .filters(Filter::builder().name("tag-key").values(TAG_RUN).build())
        .filters(not_terminated())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws::error("DescribeInstances", e))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            if let Some(t) = judge("instance", i.instance_id().unwrap_or_default(), i.tags()) {
                found.push(t);
            }
        }
    }
    let groups = client
        .describe_security_groups()
        .filters(Filter::builder().name("tag-key").values(TAG_RUN).build())
        .send()
        .await
        .map_err(|e| aws::error("DescribeSecurityGroups", e))?;
    for g in groups.security_groups() {
        if let Some(t) = judge("security group", g.group_id().unwrap_or_default(), g.tags()) {
            found.push(t);
        }
    }
    Ok(found)
}
