//! `runner gc`: find what a dead runner left behind and, with `--force`, remove it.
//! A dry run by default, because it kills processes.

use std::path::Path;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::Result;
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

pub async fn run(dirs: &Dirs, force: bool) -> Result<Report> {
    let mut report = Report::default();
    for dir in machine_dirs(&dirs.machines()) {
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (orphan, what) = match MachineRecord::read(&dir) {
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
        if !orphan {
            report.in_use.push(what);
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
    Ok(report)
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
