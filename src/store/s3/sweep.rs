//! Publishes whose runner died, or lost the store, before cleaning up: their journal entries
//! remain, and removing one aborts its multipart uploads and deletes its objects.

use async_trait::async_trait;

use super::{S3Store, S3Url, journal};
use crate::leftovers::{Finding, Leftover, Sweeper};
use crate::paths::Dirs;

pub struct UploadSweeper {
    pub dirs: Dirs,
}

#[async_trait]
impl Sweeper for UploadSweeper {
    async fn find(&self) -> Vec<Finding> {
        let mut found = vec![];
        for (path, record) in journal::pending(&self.dirs.uploads()) {
            let r = match record {
                Ok(r) => r,
                Err(e) => {
                    found.push(Finding::Failed(format!("upload record: {e}")));
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
                found.push(Finding::Found(Leftover::in_use(what)));
                continue;
            }
            let dirs = self.dirs.clone();
            found.push(Finding::Found(Leftover::orphan(what, async move {
                let url = S3Url {
                    bucket: r.bucket.clone(),
                    prefix: String::new(),
                };
                let store = S3Store::connect(url, &r.settings(), &dirs).await;
                store.clean(&r.prefix, &[]).await?;
                let _ = std::fs::remove_file(&path);
                Ok(String::new())
            })));
        }
        found
    }
}
