//! How a target's context reaches its machine, decided before the machine exists (a disk to
//! attach, a URL for the user data): the pack made once per context, attached to local
//! machines, fetched by presigned URL from the store a remote target publishes to, or
//! streamed over SSH (zstd-compressed for remote machines).

use std::sync::Arc;

use super::Run;
use super::inputs::Inputs;
use crate::config::{Target, Transfer};
use crate::context::pack::Pack;
use crate::error::{Error, Result};
use crate::guest::Delivery;
use crate::logs::LogSink;
use crate::machine::{Disk, Machine};
use crate::store::{ArtifactStore, Shared};

pub const SERIAL: &str = "runner-ctx";

/// What was decided for one target.
pub enum Plan {
    Attach(Disk),
    Fetch { url: String, sha256: String },
    Stream { compress: bool },
}

pub async fn plan(run: &Run, t: &Target, i: &Inputs, log: &LogSink) -> Result<Plan> {
    let attaches = i.declared.backend.attaches_disks();
    let attach = || {
        Plan::Attach(Disk {
            path: i.pack.image.clone(),
            serial: SERIAL.into(),
        })
    };
    let plan = match t.transfer {
        Transfer::Attach if !attaches => {
            return Err(Error::TargetSetting {
                target: t.name.clone(),
                problem: format!(
                    "context_transfer = \"attach\", but builder `{}` cannot attach disks",
                    t.builder.name
                ),
            });
        }
        Transfer::Attach => attach(),
        Transfer::Auto if attaches => attach(),
        Transfer::Ssh => Plan::Stream {
            compress: !attaches,
        },
        Transfer::Auto | Transfer::Fetch => match share(run, &i.store, &i.pack).await? {
            Some((shared, sha256)) => Plan::Fetch {
                url: shared.url,
                sha256,
            },
            None if t.transfer == Transfer::Fetch => {
                return Err(Error::TargetSetting {
                    target: t.name.clone(),
                    problem: "context_transfer = \"fetch\" needs a target that publishes to S3"
                        .into(),
                });
            }
            None => Plan::Stream { compress: true },
        },
    };
    log.note(&match &plan {
        Plan::Attach(d) => format!("context: attached as a disk ({})", d.path.display()),
        Plan::Fetch { .. } => "context: fetched by the machine from the store".into(),
        Plan::Stream { compress } => format!(
            "context: streamed over SSH{}",
            if *compress { ", zstd-compressed" } else { "" }
        ),
    });
    Ok(plan)
}

/// The pack (compressed) in the store under its digest, once per run and store, with the
/// compressed file's sha256; the run removes it when it ends.
async fn share(
    run: &Run,
    store: &Arc<dyn ArtifactStore>,
    pack: &Pack,
) -> Result<Option<(Shared, String)>> {
    let name = format!("{}.tar.zst", pack.tar_sha256);
    let (compressed, sha256) = crate::context::pack::compressed(pack).await?;
    let Some(shared) = store.share(&name, &compressed).await? else {
        return Ok(None);
    };
    let mut list = run.shared.lock().unwrap();
    if !list.iter().any(|(_, s)| s.key == shared.key) {
        list.push((store.clone(), shared.clone()));
    }
    Ok(Some((shared, sha256)))
}

/// The delivery the plan makes for this machine.
pub fn delivery<'a>(plan: &'a Plan, i: &'a Inputs, machine: &Machine) -> Delivery<'a> {
    match plan {
        Plan::Attach(_) => Delivery::Attached { serial: SERIAL },
        Plan::Stream { compress } => Delivery::Streamed {
            tar: &i.pack.tar,
            compress: *compress,
        },
        Plan::Fetch { url, sha256 } => Delivery::Fetched {
            url,
            sha256,
            connect_to: connect_to(url, machine.loopback_alias),
        },
    }
}

/// `127.0.0.1:PORT:10.0.2.2:PORT` when the URL names the host's loopback and the machine
/// reaches it elsewhere; the URL (and its signature) stay as they are.
pub(super) fn connect_to(url: &str, alias: Option<&str>) -> Option<String> {
    let alias = alias?;
    let host_port = url.split("://").nth(1)?.split('/').next()?;
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "80"));
    matches!(host, "127.0.0.1" | "localhost").then(|| format!("{host}:{port}:{alias}:{port}"))
}

/// After the run: every pack it put in a store is removed again.
pub async fn unshare_all(run: &Run) {
    let list = std::mem::take(&mut *run.shared.lock().unwrap());
    for (store, shared) in list {
        if let Err(e) = store.unshare(&shared).await {
            eprintln!(
                "runner: cannot remove the shared context pack {}: {e}",
                shared.key
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connect_to;

    #[test]
    fn only_loopback_urls_are_redirected() {
        let alias = Some("10.0.2.2");
        assert_eq!(
            connect_to("http://127.0.0.1:3900/b/k?X-Amz=1", alias).as_deref(),
            Some("127.0.0.1:3900:10.0.2.2:3900")
        );
        assert_eq!(connect_to("https://s3.example.com/b/k", alias), None);
        assert_eq!(connect_to("http://127.0.0.1:3900/b/k", None), None);
    }
}
