//! `runner gc`: find what a dead runner left behind and, with `--force`, remove it.
//! A dry run by default, because it kills processes.

use std::path::Path;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::config::{Backend, Builder};
use crate::error::Result;
use crate::machine::ec2;
use crate::machine::state::CloudRecord;
use crate::machine::state::{MachineRecord, machine_dirs, processes_mentioning};
use crate::paths::Dirs;
use crate::store::s3::journal;
use crate::store::s3::{S3Store, S3Url};

#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    /// Found, and removal was tried but failed (e.g. the S3 store is unreachable).
    pub failed: Vec<String>,
    pub would_remove: Vec<String>,
    pub in_use: Vec<String>,
}

/// `project` names the EC2 regions and endpoints to scan (those of its builders, besides
/// those in local records).
pub async fn run(dirs: &Dirs, project: &Path, force: bool) -> Result<Report> {
    let mut report = Report::default();
    let mut clouds: Vec<(String, Option<String>)> = Builder::all(project)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| match b.backend {
            Backend::Ec2(e) => Some((e.region.unwrap_or_default(), e.endpoint)),
            Backend::Qemu(_) => None,
        })
        .collect();
    let mut handled = vec![];
    for dir in machine_dirs(&dirs.machines()) {
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let record = MachineRecord::read(&dir);
        let cloud = record.as_ref().ok().and_then(|r| r.cloud.clone());
        let (orphan, what) = match record {
            Ok(r) if r.orphaned() => (
                true,
                format!(
                    "machine {id} ({}, {}; owner pid {} gone{})",
                    r.label,
                    r.backend,
                    r.owner_pid,
                    if r.kept { ", kept" } else { "" }
                ),
            ),
            Ok(r) => (
                false,
                format!(
                    "machine {id} ({}) in use by runner pid {}",
                    r.label, r.owner_pid
                ),
            ),
            // No readable record: a launch that died before writing it, unless a process still uses it.
            Err(_) => (
                processes_mentioning(&dir).is_empty(),
                format!("machine {id} (no record)"),
            ),
        };
        if let Some(c) = &cloud {
            clouds.push((c.region.clone(), c.endpoint.clone()));
            handled.extend(c.instance_id.clone());
            handled.extend(c.security_group.clone());
        }
        if !orphan {
            report.in_use.push(what);
        } else if force && let Some(c) = cloud {
            let client = ec2::client(Some(&c.region), c.endpoint.as_deref()).await;
            match ec2::cleanup::destroy(&client, &c, None).await {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    report
                        .removed
                        .push(format!("{what}: terminated {}", describe_cloud(&c)));
                }
                Err(e) => report
                    .failed
                    .push(format!("{what}: {}", crate::error::chain(&e))),
            }
        } else if force {
            remove_machine(&dir);
            report.removed.push(what);
        } else {
            report.would_remove.push(what);
        }
    }
    for scratch in stale_bakes(&dirs.images()) {
        let what = format!("unfinished bake {}", scratch.display());
        if force {
            let _ = std::fs::remove_dir_all(&scratch);
            report.removed.push(what);
        } else {
            report.would_remove.push(what);
        }
    }
    uploads(dirs, force, &mut report).await;
    clouds.sort();
    clouds.dedup();
    for (region, endpoint) in clouds {
        tagged(&region, endpoint.as_deref(), &handled, force, &mut report).await;
    }
    Ok(report)
}

fn describe_cloud(c: &CloudRecord) -> String {
    let mut parts: Vec<String> = c.instance_id.iter().cloned().collect();
    parts.extend(
        c.security_group
            .iter()
            .map(|g| format!("security group {g}")),
    );
    format!("{} in {}", parts.join(" and "), c.region)
}

/// Instances and security groups tagged by runner in one region whose run is gone or whose
/// expiry passed, beyond those local records already covered (`handled`).
async fn tagged(
    region: &str,
    endpoint: Option<&str>,
    handled: &[String],
    force: bool,
    report: &mut Report,
) {
    let region = (!region.is_empty()).then_some(region);
    let client = ec2::client(region, endpoint).await;
    let found = match ec2::cleanup::scan(&client).await {
        Ok(f) => f,
        Err(e) => {
            report.failed.push(format!(
                "EC2 scan of {}: {}",
                region.unwrap_or("the default region"),
                crate::error::chain(&e)
            ));
            return;
        }
    };
    let (dead, live): (Vec<_>, Vec<_>) = found
        .iter()
        .filter(|t| !handled.contains(&t.id))
        .partition(|t| t.removable());
    report.in_use.extend(live.iter().map(|t| t.describe()));
    if !force {
        report
            .would_remove
            .extend(dead.iter().map(|t| t.describe()));
        return;
    }
    for (what, r) in ec2::cleanup::remove(&client, &dead).await {
        match r {
            Ok(()) => report.removed.push(what),
            Err(e) => report
                .failed
                .push(format!("{what}: {}", crate::error::chain(&e))),
        }
    }
}

/// S3 publishes whose runner died, or lost the store, before cleaning up: abort their
/// multipart uploads and delete their objects, then forget them.
async fn uploads(dirs: &Dirs, force: bool, report: &mut Report) {
    for (path, record) in journal::pending(&dirs.uploads()) {
        let r = match record {
            Ok(r) => r,
            Err(e) => {
                report.failed.push(format!("upload record: {e}"));
                continue;
            }
        };
        let what = format!(
            "partial upload {} (runner pid {}{})",
            r.describe(),
            r.owner_pid,
            if r.orphaned() { " gone" } else { "" }
        );
        if !r.orphaned() {
            report.in_use.push(what);
            continue;
        }
        if !force {
            report.would_remove.push(what);
            continue;
        }
        let url = S3Url {
            bucket: r.bucket.clone(),
            prefix: String::new(),
        };
        let store = S3Store::connect(url, &r.settings(), dirs).await;
        match store.clean(&r.prefix, &[]).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                report.removed.push(what);
            }
            Err(e) => report
                .failed
                .push(format!("{what}: {}", crate::error::chain(&e))),
        }
    }
}

fn remove_machine(dir: &Path) {
    for pid in processes_mentioning(dir) {
        // QEMU leads its own process group; kill the group, then the pid in case it is not.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Scratch directories of bakes whose lock nobody holds any more.
fn stale_bakes(images: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(images) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some(rest) = name.strip_prefix(".bake-") else {
                return false;
            };
            let short = rest.split('-').next().unwrap_or_default().to_owned();
            // Any lock whose digest starts with this prefix and can be taken means no bake runs.
            std::fs::read_dir(images)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| {
                            e.file_name().to_string_lossy().starts_with(&short)
                                && e.file_name().to_string_lossy().ends_with(".lock")
                        })
                        .all(|e| lock_free(&e.path()))
                })
                .unwrap_or(true)
        })
        .collect()
}

fn lock_free(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return true;
    };
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}
