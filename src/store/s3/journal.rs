//! A record of every S3 publish in flight, written before the first byte goes up and removed
//! once the publish completed or was cleaned up. What survives is work a runner could not
//! finish cleaning: it was SIGKILLed, or the server vanished mid-upload and stayed away
//! through the retries. `runner gc` finds these records and finishes the job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Settings;
use crate::error::{Error, IoContext, Result};
use crate::host::{Owner, now_unix};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingUpload {
    pub bucket: String,
    /// The build's own prefix (`…/<target>/<build id>/`), or a run's own pack directory
    /// (`….runner/packs/<run>/`): everything under it is this publish's or this run's, so
    /// cleaning it up can never touch another build or run.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub created_unix: u64,
}

impl PendingUpload {
    pub fn settings(&self) -> Settings {
        Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
        }
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// True when the runner that started this publish is gone.
    pub fn orphaned(&self) -> bool {
        !Owner {
            pid: self.owner_pid,
            start: self.owner_start,
        }
        .alive()
    }
}

/// A written record; [`Entry::finish`] removes it. Dropping it without finishing keeps it,
/// which is the point: only a clean end may forget an upload.
pub struct Entry {
    path: PathBuf,
}

impl Entry {
    pub fn write(dir: &Path, bucket: &str, prefix: &str, settings: &Settings) -> Result<Entry> {
        std::fs::create_dir_all(dir).ctx(|| format!("cannot create `{}`", dir.display()))?;
        let me = Owner::me();
        let record = PendingUpload {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            path_style: settings.path_style,
            owner_pid: me.pid,
            owner_start: me.start,
            created_unix: now_unix(),
        };
        let file = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".json")
            .tempfile_in(dir)
            .ctx(|| format!("cannot create an upload record in `{}`", dir.display()))?;
        serde_json::to_writer_pretty(file.as_file(), &record)
            .map_err(std::io::Error::from)
            .ctx(|| format!("cannot write an upload record in `{}`", dir.display()))?;
        let (_, path) = file
            .keep()
            .map_err(|e| e.error)
            .ctx(|| format!("cannot keep an upload record in `{}`", dir.display()))?;
        Ok(Entry { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn finish(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Every record in `dir`, with its path; unreadable ones are reported, not skipped silently.
pub fn pending(dir: &Path) -> Vec<(PathBuf, Result<PendingUpload>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let r = std::fs::read(&p)
                .ctx(|| format!("cannot read `{}`", p.display()))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| Error::BadFile {
                        path: p.clone(),
                        problem: format!("corrupt upload record: {e}"),
                    })
                });
            (p, r)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
