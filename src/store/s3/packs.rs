//! Context packs shared for machines to fetch: each process puts its packs in a directory of
//! its own, `.runner/packs/<run>/`, journaled before the first byte goes up like a publish, so
//! one run's cleanup never deletes what another run's machine is fetching and `runner gc`
//! removes what a killed run left.

use std::path::Path;

use super::{S3Store, journal};
use crate::error::{Error, Result};
use crate::store::Shared;

/// The journal entry covering this run's pack directory while any pack of it is shared.
#[derive(Default)]
pub(super) struct Packs {
    pub(super) entry: Option<journal::Entry>,
    pub(super) keys: std::collections::HashSet<String>,
}

impl S3Store {
    pub(super) async fn share_pack(&self, name: &str, file: &Path) -> Result<Shared> {
        let dir = format!("{}.runner/packs/{}/", self.prefix_slash(), self.run);
        let key = format!("{dir}{name}");
        {
            // Journaled before the first byte goes up, so `runner gc` finds a pack whose
            // runner was killed before it could remove it.
            let mut packs = self.packs.lock().unwrap();
            if packs.entry.is_none() {
                let entry =
                    journal::Entry::write(&self.journal, &self.url.bucket, &dir, &self.settings)?;
                packs.entry = Some(entry);
            }
            packs.keys.insert(key.clone());
        }
        let shared = self.put_and_presign(&key, file).await;
        if shared.is_err() {
            // Nothing of it will be fetched: removed now (what an upload left, too), as unshared.
            let gone = Shared {
                key: key.clone(),
                url: String::new(),
            };
            let _ = self.unshare_pack(&gone).await;
        }
        shared
    }

    /// Uploads `file` to `key` unless it is there already (another target of this run shared
    /// the same pack), and presigns a download.
    async fn put_and_presign(&self, key: &str, file: &Path) -> Result<Shared> {
        let there = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await;
        match there {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found()) => {
                self.upload_file(file, key).await?;
            }
            Err(e) => return Err(self.fail("check", key, e)),
        }
        let expires = aws_sdk_s3::presigning::PresigningConfig::expires_in(
            std::time::Duration::from_secs(3600),
        )
        .map_err(|e| Error::Aws {
            context: format!("presigning `{key}`"),
            code: None,
            summary: e.to_string(),
            source: Box::new(e),
        })?;
        let url = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(key)
            .presigned(expires)
            .await
            .map_err(|e| self.fail("presigning", key, e))?
            .uri()
            .to_owned();
        Ok(Shared {
            key: key.to_owned(),
            url,
        })
    }

    /// Deletes a shared pack; the journal entry goes with the run's last one. A pack that
    /// cannot be deleted keeps the entry, for `runner gc`.
    pub(super) async fn unshare_pack(&self, shared: &Shared) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.url.bucket)
            .key(&shared.key)
            .send()
            .await
            .map_err(|e| self.fail("delete", &shared.key, e))?;
        let mut packs = self.packs.lock().unwrap();
        packs.keys.remove(&shared.key);
        if packs.keys.is_empty()
            && let Some(entry) = packs.entry.take()
        {
            entry.finish();
        }
        Ok(())
    }
}
