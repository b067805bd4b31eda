//! The resources of many dead machines removed together, as `gc` finds them after a crash at
//! fleet scale: one listing for the instances whose ids were never recorded, terminations and
//! the wait for them in batches, then the run's groups. One record at a time costs three or
//! four calls and a wait per machine (a thousand did not finish in five minutes).

use std::collections::HashSet;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::types::{Filter, Tag};
use tokio::sync::OnceCell;

use super::cleanup::{TERMINATE_WAIT, delete_group, in_groups, instance_ids, not_terminated};
use super::{TAG_MACHINE, client, fleet};
use crate::aws;
use crate::error::{Error, Result, chain};
use crate::machine::record::CloudRecord;

/// Ids per call: EC2 takes up to 200 values in a filter.
const CHUNK: usize = 200;

/// The orphaned records of one region and endpoint.
pub struct Reap {
    region: String,
    endpoint: Option<String>,
    records: Vec<CloudRecord>,
    /// The batch's outcome, told to every machine of it (an error as text: it is shared).
    done: OnceCell<std::result::Result<(), String>>,
}

impl Reap {
    pub fn new(region: String, endpoint: Option<String>, records: Vec<CloudRecord>) -> Reap {
        Reap {
            region,
            endpoint,
            records,
            done: OnceCell::new(),
        }
    }

    /// Removes everything of the batch, once, whichever of its machines asks first.
    pub async fn run(&self) -> Result<()> {
        let done = self
            .done
            .get_or_init(|| async { self.reap().await.map_err(|e| chain(&e)) });
        done.await.clone().map_err(Error::other)
    }

    async fn reap(&self) -> Result<()> {
        let region = (!self.region.is_empty()).then_some(self.region.as_str());
        let client = client(region, self.endpoint.as_deref()).await;
        let mut ids: Vec<String> = self
            .records
            .iter()
            .filter_map(|c| c.instance_id.clone())
            .collect();
        // Launched (or about to be) when runner died: known by the machine tag alone.
        let untracked: HashSet<String> = self
            .records
            .iter()
            .filter(|c| c.instance_id.is_none() && !c.owns_group)
            .filter_map(|c| c.machine_tag.clone())
            .collect();
        if !untracked.is_empty() {
            ids.extend(tagged_instances(&client, &untracked).await?);
        }
        let groups = self.groups(&client).await?;
        if !groups.is_empty() {
            ids.extend(in_groups(&client, &groups).await?);
        }
        ids.sort();
        ids.dedup();
        fleet::terminate_ids(&client, &ids).await?;
        for chunk in ids.chunks(CHUNK) {
            client
                .wait_until_instance_terminated()
                .set_instance_ids(Some(chunk.to_vec()))
                .wait(TERMINATE_WAIT)
                .await
                .map_err(|e| Error::Aws {
                    context: format!("waiting for {} instances to terminate", chunk.len()),
                    code: None,
                    summary: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                    source: Box::new(e),
                })?;
        }
        for group in &groups {
            delete_group(&client, group).await?;
        }
        Ok(())
    }

    /// The groups runs made for themselves: recorded, or found by their machine tag.
    async fn groups(&self, client: &Client) -> Result<Vec<String>> {
        let owned = self.records.iter().filter(|c| c.owns_group);
        let mut groups: Vec<String> = owned
            .clone()
            .filter_map(|c| c.security_group.clone())
            .collect();
        let untracked: HashSet<String> = owned
            .filter(|c| c.security_group.is_none())
            .filter_map(|c| c.machine_tag.clone())
            .collect();
        if untracked.is_empty() {
            return Ok(groups);
        }
        let mut pages = client
            .describe_security_groups()
            .filters(tagged())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws::error("DescribeSecurityGroups", e))?;
            groups.extend(
                page.security_groups()
                    .iter()
                    .filter(|g| ours(g.tags(), &untracked))
                    .filter_map(|g| g.group_id().map(str::to_owned)),
            );
        }
        Ok(groups)
    }
}

/// Whatever carries a `runner:machine` tag: one listing, matched here, costs EC2 far less
/// than a filter naming hundreds of values.
fn tagged() -> Filter {
    Filter::builder()
        .name("tag-key")
        .values(TAG_MACHINE)
        .build()
}

/// Tagged as one of these machines.
fn ours(tags: &[Tag], machines: &HashSet<String>) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(TAG_MACHINE) && t.value().is_some_and(|v| machines.contains(v)))
}

/// Live instances of these machines.
async fn tagged_instances(client: &Client, machines: &HashSet<String>) -> Result<Vec<String>> {
    let request = client
        .describe_instances()
        .filters(tagged())
        .filters(not_terminated());
    instance_ids(request, |i| ours(i.tags(), machines)).await
}
