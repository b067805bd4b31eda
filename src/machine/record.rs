//! The on-disk record of each machine, so that machines survive nothing but can always be
//! found: if runner is SIGKILLed, `runner gc` reads these records, sees the owning process is
//! gone, and the backend that made the machine removes what it left.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::host::{Owner, now_unix};

pub const RECORD: &str = "machine.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub backend: String,
    pub label: String,
    /// The runner process that owns the machine, with its start time so a recycled pid
    /// is not mistaken for the owner.
    pub owner_pid: u32,
    pub owner_start: u64,
    pub created_unix: u64,
    /// Set by `--keep-failed`: the owner exits but the machine stays for debugging.
    #[serde(default)]
    pub kept: bool,
    /// How to reach it, for `runner gc` listings and `--keep-failed` instructions.
    pub ssh_port: u16,
    /// Cloud resources (EC2), each written here as soon as it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudRecord>,
}

/// What an EC2 machine owns in the cloud, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudRecord {
    pub region: String,
    pub endpoint: Option<String>,
    pub instance_id: Option<String>,
    /// A temporary security group runner created for this machine alone.
    pub security_group: Option<String>,
    /// The `runner:machine` tag of everything made for this machine: if runner is stopped
    /// while a create call's answer is in flight, the resource exists but its id was never
    /// learned, and teardown finds it by this tag instead.
    #[serde(default)]
    pub machine_tag: Option<String>,
    /// Whether runner makes a temporary group for this machine (so one may exist unrecorded).
    #[serde(default)]
    pub owns_group: bool,
}

impl MachineRecord {
    pub fn new(id: &str, backend: &str, label: &str, ssh_port: u16) -> MachineRecord {
        let me = Owner::me();
        MachineRecord {
            id: id.to_owned(),
            backend: backend.to_owned(),
            label: label.to_owned(),
            owner_pid: me.pid,
            owner_start: me.start,
            created_unix: now_unix(),
            kept: false,
            ssh_port,
            cloud: None,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".machine.json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("record serializes");
        std::fs::write(&tmp, json).ctx(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(RECORD))
            .ctx(|| format!("cannot write machine record in `{}`", dir.display()))
    }

    pub fn read(dir: &Path) -> Result<MachineRecord> {
        let path = dir.join(RECORD);
        let bytes = std::fs::read(&path).ctx(|| format!("cannot read `{}`", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path,
            problem: format!("corrupt machine record: {e}"),
        })
    }

    /// True when the runner that launched this machine is gone (or the machine was kept).
    pub fn orphaned(&self) -> bool {
        let owner = Owner {
            pid: self.owner_pid,
            start: self.owner_start,
        };
        self.kept || !owner.alive()
    }

    /// How `gc` names it: `machine 3f2a9c1e (hello, qemu; owner pid 123 gone, kept)`.
    pub fn describe(&self) -> String {
        if self.orphaned() {
            format!(
                "machine {} ({}, {}; owner pid {} gone{})",
                self.id,
                self.label,
                self.backend,
                self.owner_pid,
                if self.kept { ", kept" } else { "" }
            )
        } else {
            format!(
                "machine {} ({}) in use by runner pid {}",
                self.id, self.label, self.owner_pid
            )
        }
    }
}

/// Marks a machine as deliberately left running (`--keep-failed`), so `gc` treats it as
/// removable once its owner has exited.
pub fn mark_kept(dir: &Path) -> Result<()> {
    let mut r = MachineRecord::read(dir)?;
    r.kept = true;
    r.write(dir)
}
