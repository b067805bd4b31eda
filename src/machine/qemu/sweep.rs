//! What dead runners left of local machines: machine directories whose owner is gone (or
//! that never got a record), with any QEMU still naming them; unfinished bakes and
//! warm-start snapshots.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::host::{kill_processes_mentioning, processes_mentioning};
use crate::leftovers::{Finding, Leftover, Sweeper};
use crate::machine::dir;
use crate::machine::record::MachineRecord;
use crate::paths::Dirs;

pub struct QemuSweeper {
    pub dirs: Dirs,
}

#[async_trait]
impl Sweeper for QemuSweeper {
    async fn find(&self) -> Vec<Finding> {
        let mut found = vec![];
        for path in dir::all(&self.dirs.machines()) {
            let id = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let leftover = match MachineRecord::read(&path) {
                Ok(r) if r.backend != "qemu" => continue,
                Ok(r) if r.orphaned() => Leftover::orphan(r.describe(), remove(path)),
                Ok(r) => Leftover::in_use(r.describe()),
                // No readable record: a launch that died before writing it, whatever its
                // backend (none made anything but the directory yet), unless a process
                // still uses it.
                Err(_) if processes_mentioning(&path).is_empty() => {
                    Leftover::orphan(format!("machine {id} (no record)"), remove(path))
                }
                Err(_) => Leftover::in_use(format!("machine {id} (no record, in use)")),
            };
            found.push(Finding::Found(leftover));
        }
        let images = self.dirs.images();
        let downloads = super::image::Cache::new(&self.dirs).downloads();
        found.extend(removals(
            "unfinished bake",
            super::image::stale_bakes(&images),
        ));
        found.extend(removals(
            "unfinished snapshot",
            super::warm::stale_parts(&images),
        ));
        found.extend(removals(
            "unfinished download",
            super::image::http::stale_parts(&downloads),
        ));
        found
    }
}

/// Kills whatever still names the directory (QEMU leads its own process group), then
/// removes it.
async fn remove(path: PathBuf) -> crate::error::Result<String> {
    kill_processes_mentioning(&path);
    let _ = std::fs::remove_dir_all(&path);
    Ok(String::new())
}

/// Scratch files and directories nobody holds, each one removal.
fn removals(what: &'static str, paths: Vec<PathBuf>) -> impl Iterator<Item = Finding> {
    paths
        .into_iter()
        .map(move |path| Finding::Found(Leftover::path(what, path)))
}
