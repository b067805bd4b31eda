//! The on-disk record of each machine, so that machines survive nothing but can always be
//! found: if runner is SIGKILLed, `runner gc` reads these records, sees the owning process is
//! gone, and removes what it left.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

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
        let me = std::process::id();
        MachineRecord {
            id: id.to_owned(),
            backend: backend.to_owned(),
            label: label.to_owned(),
            owner_pid: me,
            owner_start: process_start(me).unwrap_or(0),
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
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::other(format!("corrupt machine record `{}`: {e}", path.display())))
    }

    /// True when the runner that launched this machine is gone (or the machine was kept).
    pub fn orphaned(&self) -> bool {
        self.kept || process_start(self.owner_pid) != Some(self.owner_start)
    }
}

/// Marks a machine as deliberately left running (`--keep-failed`), so `gc` treats it as
/// removable once its owner has exited.
pub fn mark_kept(dir: &Path) -> Result<()> {
    let mut r = MachineRecord::read(dir)?;
    r.kept = true;
    r.write(dir)
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every process whose command line mentions `needle` (a machine directory): how gc finds a
/// QEMU even if runner died before recording its pid.
pub fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid as u32 != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Machine directories under `machines`, sorted.
pub fn machine_dirs(machines: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(machines)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}
