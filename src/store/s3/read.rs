//! Reading what a store holds: the newest complete build of a target (build directories
//! listed newest first, the first with a manifest wins) and small objects by key.

use super::S3Store;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, Manifest};

impl S3Store {
    /// The newest complete build of `target` whose build id starts with `id_prefix`: build
    /// directories are listed page by page, newest first by the start time that ends their
    /// id, and the first with a manifest wins. Errors are the store's, never "no build".
    pub(super) async fn find_manifest(
        &self,
        target: &str,
        id_prefix: &str,
    ) -> Result<Option<(String, Manifest)>> {
        // `<prefix>/<target>/<id_prefix>`: with an empty id, the target's directory itself.
        let mut under = self
            .build_prefix(target, id_prefix)
            .trim_end_matches('/')
            .to_owned();
        if id_prefix.is_empty() {
            under.push('/'); // `<target>/`, so that target `t` never matches `t2`
        }
        let mut builds = self.build_dirs(&under).await?;
        // Build ids end in their start time: the newest sorts last by that number.
        builds.sort_by_key(|d| {
            let id = d
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            id.rsplit('-')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        });
        while let Some(dir) = builds.pop() {
            let key = format!("{dir}{}", manifest::FILE);
            if let Some(m) = self.read_manifest(&key).await? {
                return Ok(Some((key, m)));
            }
        }
        Ok(None)
    }

    /// Build directories (`…/<target>/<build id>/`) under `under`, across every page.
    async fn build_dirs(&self, under: &str) -> Result<Vec<String>> {
        let mut out = vec![];
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(under)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("listing", under, e))?;
            out.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
        }
        Ok(out)
    }

    /// The manifest at `key`; `None` if there is none (a build still uploading, or cleaned).
    pub(super) async fn read_manifest(&self, key: &str) -> Result<Option<Manifest>> {
        let Some(bytes) = self.get_bytes(key).await? else {
            return Ok(None);
        };
        let tmp = tempfile::NamedTempFile::new().ctx(|| "cannot create a temporary file")?;
        std::fs::write(tmp.path(), &bytes).ctx(|| "cannot write a temporary file")?;
        Manifest::read(tmp.path()).map(Some)
    }

    /// A small object's bytes; `None` if there is no such key.
    pub(super) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let got = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await;
        let body = match got {
            Ok(o) => o.body,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                return Ok(None);
            }
            Err(e) => return Err(self.fail("download", key, e)),
        };
        let bytes = body
            .collect()
            .await
            .map_err(|e| Error::Download {
                uri: self.uri_of(key),
                source: Box::new(e),
            })?
            .into_bytes();
        Ok(Some(bytes.to_vec()))
    }
}
