//! Reading what a store holds: the newest build of a target the store's trust accepts, and
//! small objects by key, capped. Anyone who can write to the bucket can plant a build under
//! any key, so a key's name is only a hint of the order to read builds in: a build counts
//! only once its manifest's own record of its start (which names its build id) matches the
//! key it lies under, and its provenance holds for the configured key.

use super::S3Store;
use crate::beneath::MAX_RECORD;
use crate::error::{Error, Result};
use crate::manifest;
use crate::store::{SHA256SUMS, Stored, Trust};

/// At most this many build directories are listed for one lookup (100 pages).
const MAX_LISTED: usize = 100_000;
/// At most this many builds are read, newest first, before a lookup gives up: builds that do
/// not verify cost a read each, and there may be many planted ones.
const MAX_READ: usize = 64;

/// A build directory with the start time its id claims (`…/<inputs>-<start>/`).
struct Dir {
    prefix: String,
    id: String,
    started: u64,
}

impl S3Store {
    /// The newest build of `target` whose id starts with `id_prefix` that `trust` accepts,
    /// as the prefix of its directory and its records. Errors are the store's, never "no
    /// build"; a build that is malformed or refused is passed over (and logged).
    pub(super) async fn find(
        &self,
        target: &str,
        id_prefix: &str,
        trust: &Trust,
    ) -> Result<Option<(String, Stored)>> {
        // `<prefix>/<target>/<id_prefix>`: with an empty id, the target's directory itself.
        let mut under = self
            .build_prefix(target, id_prefix)
            .trim_end_matches('/')
            .to_owned();
        if id_prefix.is_empty() {
            under.push('/'); // `<target>/`, so that target `t` never matches `t2`
        }
        let mut dirs = self.build_dirs(&under).await?;
        // Newest first by the claimed start; what the claim is worth is checked per build.
        dirs.sort_by(|a, b| b.started.cmp(&a.started).then(b.id.cmp(&a.id)));
        for dir in dirs.into_iter().take(MAX_READ) {
            let stored = match self.read_stored(&dir.prefix).await {
                Ok(Some(s)) => s,
                Ok(None) => continue, // still uploading, or cleaned
                Err(e @ Error::BadFile { .. }) => {
                    tracing::warn!("ignoring build {}: {e}", self.uri_of(&dir.prefix));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match trust.check(target, Some(dir.id.as_str()), &stored) {
                Ok(()) => return Ok(Some((dir.prefix, stored))),
                Err(why) => tracing::warn!("ignoring build {}: {why}", self.uri_of(&dir.prefix)),
            }
        }
        Ok(None)
    }

    /// A build directory's records, each in one capped read; `None` without a manifest.
    async fn read_stored(&self, prefix: &str) -> Result<Option<Stored>> {
        let key = format!("{prefix}{}", manifest::FILE);
        let Some(manifest_bytes) = self.get_bytes(&key).await? else {
            return Ok(None);
        };
        let sha256sums = self.get_bytes(&format!("{prefix}{SHA256SUMS}")).await?;
        let provenance = self
            .get_bytes(&format!("{prefix}{}", crate::provenance::FILE))
            .await?;
        let from = std::path::PathBuf::from(self.uri_of(&key));
        Stored::parse(manifest_bytes, &from, sha256sums, provenance).map(Some)
    }

    /// Build directories (`…/<target>/<build id>/`) under `under`, across every page, up to
    /// [`MAX_LISTED`]: past that the lookup fails rather than guess.
    async fn build_dirs(&self, under: &str) -> Result<Vec<Dir>> {
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
                    .filter_map(|p| p.prefix())
                    .filter_map(dir),
            );
            if out.len() > MAX_LISTED {
                return Err(Error::BadFile {
                    path: self.uri_of(under).into(),
                    problem: format!(
                        "more than {MAX_LISTED} build directories: remove old builds first"
                    ),
                });
            }
        }
        Ok(out)
    }

    /// A small object's bytes, at most [`MAX_RECORD`] of them; `None` if there is no such key.
    pub(super) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let got = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(key)
            .send()
            .await;
        let mut body = match got {
            Ok(o) => o.body,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                return Ok(None);
            }
            Err(e) => return Err(self.fail("download", key, e)),
        };
        let mut out = Vec::new();
        // Counted as it arrives: a length the server announces is its word, not a cap.
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Download {
            uri: self.uri_of(key),
            source: Box::new(e),
        })? {
            if (out.len() + chunk.len()) as u64 > MAX_RECORD {
                return Err(Error::BadFile {
                    path: self.uri_of(key).into(),
                    problem: format!("larger than {MAX_RECORD} bytes: refused"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }
}

/// `…/<id>/` with the start time its id ends in; `None` for a directory that names no build.
fn dir(prefix: &str) -> Option<Dir> {
    let id = prefix.trim_end_matches('/').rsplit('/').next()?;
    let started = id.rsplit_once('-')?.1.parse().ok()?;
    Some(Dir {
        prefix: prefix.to_owned(),
        id: id.to_owned(),
        started,
    })
}
