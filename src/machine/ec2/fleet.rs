//! What the machines of one builder share within a run, so that its control plane grows with
//! the run and not with its machines: one poller that asks about every watched instance in
//! one DescribeInstances (the wait for `running`, the address, and — for as long as the
//! machine lives — whether it was taken away), and terminations gathered into one
//! TerminateInstances. The run's temporary security group is [`super::group`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::aws;
use crate::error::{Error, Result};
use crate::machine::Lost;

/// How long a burst of launches or teardowns is gathered into one call.
const GATHER: Duration = Duration::from_millis(200);
/// How often instances are asked about while one of them is not yet `running`.
const STARTING_POLL: Duration = Duration::from_secs(2);
/// How often running instances are asked about (to notice one taken away).
const WATCH_POLL: Duration = Duration::from_secs(10);
/// Ids per DescribeInstances filter and per TerminateInstances call.
const CHUNK: usize = 200;

/// What the poller last saw of one instance.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub state: Option<InstanceStateName>,
    /// Why it is in that state, when EC2 says (`Server.SpotInstanceTermination: …`).
    pub reason: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

impl Seen {
    /// Gone or going without runner asking (a spot reclaim, someone else's terminate).
    fn ended(&self) -> bool {
        matches!(
            self.state,
            Some(
                InstanceStateName::ShuttingDown
                    | InstanceStateName::Terminated
                    | InstanceStateName::Stopping
                    | InstanceStateName::Stopped
            )
        )
    }
}

struct Watched {
    seen: watch::Sender<Seen>,
    lost: Lost,
}

type Doomed = (String, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct State {
    watched: HashMap<String, Watched>,
    doomed: Vec<Doomed>,
    /// A worker task runs (it ends when nothing is watched or doomed).
    working: bool,
}

struct Inner {
    client: Client,
    state: Mutex<State>,
    wake: Notify,
}

/// One per builder and run (owned by its backend); cheap to clone.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

impl Fleet {
    pub fn new(client: Client) -> Fleet {
        Fleet(Arc::new(Inner {
            client,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }))
    }

    /// Watches `id` from now until [`Fleet::unwatch`]: what the poller sees of it, and
    /// `lost` marked when it ends without runner asking.
    pub fn watch(&self, id: &str, lost: Lost) -> watch::Receiver<Seen> {
        let (seen, rx) = watch::channel(Seen::default());
        let mut s = self.0.state.lock().unwrap();
        s.watched.insert(id.to_owned(), Watched { seen, lost });
        self.start(&mut s);
        rx
    }

    pub fn unwatch(&self, id: &str) {
        self.0.state.lock().unwrap().watched.remove(id);
    }

    /// Waits until `id` is `running` and returns what was seen (its addresses), or fails
    /// when it ended first or `timeout` passed.
    pub async fn running(
        &self,
        id: &str,
        rx: &mut watch::Receiver<Seen>,
        timeout: Duration,
    ) -> Result<Seen> {
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.state == Some(InstanceStateName::Running) || s.ended()),
        )
        .await;
        let problem = match waited {
            Ok(Ok(seen)) if !seen.ended() => return Ok(seen.clone()),
            Ok(Ok(seen)) => format!(
                "{} before it ran{}",
                seen.state.as_ref().map_or("ended", |s| s.as_str()),
                seen.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            Ok(Err(_)) => "no longer watched".to_owned(),
            Err(_) => format!("not `running` within {}s", timeout.as_secs()),
        };
        Err(Error::Aws {
            context: format!("waiting for {id} to run"),
            code: None,
            summary: problem.clone(),
            source: problem.into(),
        })
    }

    /// Terminates `id` together with whatever else is being terminated at the moment (one
    /// call for many). An instance already gone counts as terminated.
    pub async fn terminate(&self, id: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.0.state.lock().unwrap();
            s.watched.remove(id);
            s.doomed.push((id.to_owned(), tx));
            self.start(&mut s);
        }
        self.0.wake.notify_one();
        rx.await.unwrap_or_else(|_| {
            let problem = "its run ended first".to_owned();
            Err(Error::Aws {
                context: format!("TerminateInstances {id}"),
                code: None,
                summary: problem.clone(),
                source: problem.into(),
            })
        })
    }

    fn start(&self, s: &mut State) {
        if !s.working {
            s.working = true;
            tokio::spawn(work(self.0.clone()));
        }
    }
}

/// The worker: gathers, terminates what is doomed, polls what is watched when a poll is due,
/// and ends (under the lock, so a new arrival starts another) when nothing is left.
async fn work(inner: Arc<Inner>) {
    let mut polled: Option<Instant> = None;
    loop {
        tokio::time::sleep(GATHER).await;
        let (doomed, ids, starting) = {
            let mut s = inner.state.lock().unwrap();
            let doomed = std::mem::take(&mut s.doomed);
            if doomed.is_empty() && s.watched.is_empty() {
                s.working = false;
                return;
            }
            let starting = s
                .watched
                .values()
                .any(|w| w.seen.borrow().state != Some(InstanceStateName::Running));
            let ids: Vec<String> = s.watched.keys().cloned().collect();
            (doomed, ids, starting)
        };
        if !doomed.is_empty() {
            terminate_all(&inner.client, doomed).await;
        }
        let every = if starting { STARTING_POLL } else { WATCH_POLL };
        let due = polled.is_none_or(|t| t.elapsed() + GATHER >= every);
        if due && !ids.is_empty() {
            poll(&inner, &ids).await;
            polled = Some(Instant::now());
        }
        let next = polled.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()));
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = inner.wake.notified() => {}
        }
    }
}

/// One DescribeInstances per [`CHUNK`] watched ids (a filter, so an id EC2 does not know yet
/// is left out instead of failing the call).
async fn poll(inner: &Inner, ids: &[String]) {
    for chunk in ids.chunks(CHUNK) {
        let mut pages = inner
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(chunk.to_vec()))
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    // The next poll asks again; the SDK already retried throttling.
                    tracing::debug!("{}", aws::error("DescribeInstances", e));
                    break;
                }
            };
            let s = inner.state.lock().unwrap();
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(w) = i.instance_id().and_then(|id| s.watched.get(id)) else {
                    continue;
                };
                let seen = Seen {
                    state: i.state().and_then(|s| s.name()).cloned(),
                    reason: i.state_reason().and_then(|r| {
                        let (code, message) = (r.code().unwrap_or_default(), r.message()?);
                        // EC2's messages usually begin with their code already.
                        Some(match message.starts_with(code) {
                            true => message.to_owned(),
                            false => format!("{code}: {message}"),
                        })
                    }),
                    public_ip: i.public_ip_address().map(str::to_owned),
                    private_ip: i.private_ip_address().map(str::to_owned),
                };
                if seen.ended() {
                    w.lost
                        .mark(lost_because(i.instance_id().unwrap_or_default(), &seen));
                }
                w.seen.send_replace(seen);
            }
        }
    }
}

fn lost_because(id: &str, seen: &Seen) -> String {
    let state = seen.state.as_ref().map_or("ended", |s| s.as_str());
    match &seen.reason {
        Some(r) => format!(
            "{id} {state} from outside runner ({})",
            crate::progress::sanitize(r)
        ),
        None => format!("{id} {state} from outside runner"),
    }
}

/// One TerminateInstances per [`CHUNK`] ids; a chunk refused because one id is unknown is
/// retried one by one, so a single vanished instance does not fail the others.
async fn terminate_all(client: &Client, doomed: Vec<Doomed>) {
    let mut doomed = doomed;
    while !doomed.is_empty() {
        let rest = doomed.split_off(doomed.len().min(CHUNK));
        let ids: Vec<String> = doomed.iter().map(|(id, _)| id.clone()).collect();
        match terminate(client, ids).await {
            Err(e) if super::cleanup::gone(&e) && doomed.len() > 1 => {
                for (id, tx) in doomed {
                    let _ = tx.send(terminate(client, vec![id]).await.or_else(ignore_gone));
                }
            }
            r => {
                let r = r.or_else(ignore_gone);
                for (_, tx) in doomed {
                    let _ = tx.send(r.as_ref().map(|_| ()).map_err(shared));
                }
            }
        }
        doomed = rest;
    }
}

/// Terminates these instances, [`CHUNK`] per call, one by one where a chunk names one EC2
/// no longer knows (gone already: that counts as terminated).
pub(super) async fn terminate_ids(client: &Client, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(CHUNK) {
        match terminate(client, chunk.to_vec()).await {
            Err(e) if super::cleanup::gone(&e) && chunk.len() > 1 => {
                for id in chunk {
                    terminate(client, vec![id.clone()])
                        .await
                        .or_else(ignore_gone)?;
                }
            }
            r => r.or_else(ignore_gone)?,
        }
    }
    Ok(())
}

async fn terminate(client: &Client, ids: Vec<String>) -> Result<()> {
    let what = format!("TerminateInstances {}", ids.join(" "));
    client
        .terminate_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws::error(what, e))
}

fn ignore_gone(e: Error) -> Result<()> {
    if super::cleanup::gone(&e) {
        Ok(())
    } else {
        Err(e)
    }
}

/// One batch's error, told to each machine of the batch.
fn shared(e: &Error) -> Error {
    match e {
        Error::Aws {
            context,
            code,
            summary,
            ..
        } => Error::Aws {
            context: context.clone(),
            code: code.clone(),
            summary: summary.clone(),
            source: summary.clone().into(),
        },
        e => Error::other(crate::error::chain(e)),
    }
}
