//! Artifacts in S3 (or any S3-compatible store): `<prefix>/<target>/<build id>/<file>`, where
//! the build id is `<first 16 hex of the inputs digest>-<start time>`. Files go first, then
//! `SHA256SUMS`, then `manifest.json`: a manifest's presence means its build is complete.
//!
//! How files go up is `upload`'s business. This module decides what a publish means: a
//! journal entry first (so a runner that dies mid-upload leaves a trail `runner gc` follows),
//! then the files, then the manifest; on failure, cancellation or timeout, every multipart
//! upload is aborted and every object under the build's prefix deleted, so neither a partial
//! build nor a dangling upload remains.

mod caches;
pub mod journal;
mod packs;
mod read;
pub mod sweep;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};

use self::upload::Uploader;
use super::{ArtifactStore, Publishing, Records, SHA256SUMS, Shared, Stored, Trust};
use crate::artifacts::ArtifactFile;
use crate::aws::{self, Retries};
pub use crate::config::S3Url;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, ArtifactRecord, Manifest};
use crate::paths::Dirs;

/// How to reach the store, beyond the standard AWS configuration chain.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Overrides `AWS_ENDPOINT_URL` and the AWS default (for S3-compatible stores).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
}

pub struct S3Store {
    client: Client,
    url: S3Url,
    settings: Settings,
    staging_root: PathBuf,
    journal: PathBuf,
    trust: Trust,
    /// This process's own directory for shared packs (`.runner/packs/<run>/`): another run's
    /// cleanup never deletes a pack this run's machines are fetching.
    run: String,
    /// The journal entry covering that directory while any pack of it is shared.
    packs: std::sync::Mutex<packs::Packs>,
    /// The journal entries of build-cache archives this process reserved.
    caches: caches::Entries,
}

impl S3Store {
    pub async fn connect(url: S3Url, settings: &Settings, dirs: &Dirs) -> S3Store {
        let shared = aws::config(
            settings.region.as_deref(),
            settings.endpoint.as_deref(),
            Retries::Standard { attempts: 5 },
        )
        .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            // runner sends its own SHA-256 on every object and part; the SDK's default extra
            // CRC trailers are not understood by every S3-compatible server.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            // Downloads are checked against the manifest's SHA-256 instead, which also works
            // for multipart objects (whose checksum the SDK cannot validate, and warns about).
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        S3Store {
            client: Client::from_conf(config),
            url,
            settings: settings.clone(),
            staging_root: dirs.state.join("staging"),
            journal: dirs.uploads(),
            trust: Trust::default(),
            run: hex::encode(rand::random::<[u8; 8]>()),
            packs: Default::default(),
            caches: Default::default(),
        }
    }

    /// The store handing out (as cache hits, or the newest build) only builds `trust`
    /// accepts.
    pub fn trusting(self, trust: Trust) -> S3Store {
        S3Store { trust, ..self }
    }

    /// Fails fast, before any machine boots, when the bucket is missing or not ours to use:
    /// a typo in a bucket name should not cost a whole build.
    pub async fn preflight(&self) -> Result<()> {
        if self.client.config().region().is_none() {
            return Err(Error::NoRegion {
                what: format!("`{}`", self.url),
                place: "[store]",
            });
        }
        let answer = self
            .client
            .head_bucket()
            .bucket(&self.url.bucket)
            .send()
            .await;
        let Err(e) = answer else { return Ok(()) };
        let missing = e.as_service_error().is_some_and(|se| se.is_not_found());
        let why = match (missing, aws::status(&e)) {
            (true, _) | (_, Some(404)) => "NoSuchBucket: it does not exist".to_owned(),
            (_, Some(403)) => "access denied (check the credentials and the bucket policy)".into(),
            _ => aws::summary(&e),
        };
        Err(Error::Aws {
            context: format!("cannot use bucket `{}`", self.url),
            code: e
                .as_service_error()
                .and_then(aws_smithy_types::error::metadata::ProvideErrorMetadata::code)
                .map(str::to_owned),
            summary: why,
            source: Box::new(e),
        })
    }

    /// Uploads one file to `key` the way a publish does (multipart from 8 MiB, parallel
    /// parts, SHA-256 checked by the server), aborting it on failure; returns the bytes sent.
    /// For benchmarks and tools; builds go through [`ArtifactStore::publish`].
    pub async fn upload_file(&self, path: &Path, key: &str) -> Result<u64> {
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let up = Uploader {
            store: self,
            sent: Arc::new(move |n| {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }),
            open: Default::default(),
        };
        if let Err(e) = up.put_file(path, key).await {
            let open = up.open.lock().unwrap().clone();
            let _ = self.abort(open).await;
            return Err(e);
        }
        Ok(sent.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The store's prefix with its trailing `/`, or nothing.
    fn prefix_slash(&self) -> String {
        if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        }
    }

    fn build_prefix(&self, target: &str, build_id: &str) -> String {
        format!("{}{target}/{build_id}/", self.prefix_slash())
    }

    fn uri_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }

    fn fail<E>(
        &self,
        what: &str,
        key: &str,
        e: aws_sdk_s3::error::SdkError<E, aws::Response>,
    ) -> Error
    where
        E: std::error::Error
            + aws_smithy_types::error::metadata::ProvideErrorMetadata
            + Send
            + Sync
            + 'static,
    {
        aws::error(format!("S3 {what} of `s3://{}/{key}`", self.url.bucket), e)
    }
}

pub fn build_id(m: &Manifest) -> String {
    manifest::build_id(&m.inputs_digest, m.started_unix)
}

#[async_trait]
impl ArtifactStore for S3Store {
    fn staging(&self, target: &str) -> Result<tempfile::TempDir> {
        super::staging_in(&self.staging_root, target)
    }

    fn uri(&self, target: &str, build_id: &str, path: &Path) -> String {
        self.uri_of(&format!(
            "{}{}",
            self.build_prefix(target, build_id),
            path.display()
        ))
    }

    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
        manifest: &Manifest,
        records: &Records,
        how: &Publishing,
    ) -> Result<Vec<PathBuf>> {
        super::check_reserved(target, files)?;
        let prefix = self.build_prefix(target, &build_id(manifest));
        let entry =
            journal::Entry::write(&self.journal, &self.url.bucket, &prefix, &self.settings)?;
        let up = Uploader {
            store: self,
            sent: how.sent.clone(),
            open: Default::default(),
        };
        let upload = async {
            let mut out = Vec::new();
            for f in files {
                let key = format!("{prefix}{}", f.path.display());
                up.put_file(&staged.path().join(&f.path), &key).await?;
                out.push(PathBuf::from(self.uri_of(&key)));
            }
            // The manifest goes last: its presence is what says the build is complete.
            for (name, bytes) in records.named() {
                let key = format!("{prefix}{name}");
                up.put_bytes(bytes.to_vec(), &key).await?;
                out.push(PathBuf::from(self.uri_of(&key)));
            }
            Ok::<_, Error>(out)
        };
        let result = tokio::select! {
            r = upload => r,
            _ = how.cancel.cancelled() => Err(Error::Cancelled),
        };
        let cause = match result {
            Ok(out) => {
                entry.finish();
                return Ok(out);
            }
            Err(e) => e,
        };
        let open = up.open.lock().unwrap().clone();
        match self.clean(&prefix, &open).await {
            Ok(()) => {
                entry.finish();
                Err(cause)
            }
            // The journal entry stays: it is what `runner gc` finishes from.
            Err(e) => Err(Error::CleanupFailed {
                cause: match &cause {
                    Error::Cancelled => "cancelled".to_owned(),
                    other => crate::error::chain(other),
                },
                location: format!("s3://{}/{prefix}", self.url.bucket),
                journal: entry.path().to_owned(),
                source: Box::new(e),
            }),
        }
    }

    async fn published(
        &self,
        target: &str,
        inputs_digest: &str,
    ) -> Result<Option<(Manifest, Vec<PathBuf>)>> {
        let id = &inputs_digest[..16.min(inputs_digest.len())];
        let Some((prefix, stored)) = self.find(target, id, &self.trust).await? else {
            return Ok(None);
        };
        // The id holds 16 hex digits of the digest; the build is a hit only for all 64.
        let m = stored.manifest;
        if m.inputs_digest != inputs_digest {
            return Ok(None);
        }
        let mut uris: Vec<PathBuf> = m
            .artifacts
            .iter()
            .map(|a| PathBuf::from(a.uri.clone()))
            .collect();
        for name in [SHA256SUMS, crate::provenance::FILE, manifest::FILE] {
            uris.push(PathBuf::from(self.uri_of(&format!("{prefix}{name}"))));
        }
        Ok(Some((m, uris)))
    }

    async fn records(&self, target: &str, build: Option<&str>) -> Result<Option<Stored>> {
        let any = Trust::default();
        Ok(self
            .find(target, build.unwrap_or(""), &any)
            .await?
            .map(|(_, s)| s))
    }

    async fn share(&self, name: &str, file: &Path) -> Result<Option<Shared>> {
        self.share_pack(name, file).await.map(Some)
    }

    async fn unshare(&self, shared: &Shared) -> Result<()> {
        self.unshare_pack(shared).await
    }

    fn caches(&self) -> Option<&dyn super::BucketCaches> {
        Some(self)
    }

    async fn latest(&self, target: &str) -> Result<Option<Manifest>> {
        Ok(self
            .find(target, "", &self.trust)
            .await?
            .map(|(_, s)| s.manifest))
    }

    async fn fetch(
        &self,
        target: &str,
        build: &Manifest,
        artifact: &ArtifactRecord,
        dest: &Path,
    ) -> Result<String> {
        // The key is where this store puts this build's file, whatever the manifest's URI
        // says: a manifest read back from a bucket must not point runner at other objects.
        let id = crate::manifest::build_id(&build.inputs_digest, build.started_unix);
        let key = format!("{}{}", self.build_prefix(target, &id), artifact.path);
        if artifact.uri != self.uri_of(&key) {
            return Err(Error::BadFile {
                path: artifact.uri.clone().into(),
                problem: format!("is not this build's own object `{}`", self.uri_of(&key)),
            });
        }
        let mut body = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.fail("download", &key, e))?
            .body;
        // Streamed to disk and hashed on the way: never the whole object in memory.
        let mut file = tokio::fs::File::create(dest)
            .await
            .ctx(|| format!("cannot create `{}`", dest.display()))?;
        let mut h = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Download {
            uri: artifact.uri.clone(),
            source: Box::new(e),
        })? {
            // Never more than the manifest records: an endless object stops here.
            total += chunk.len() as u64;
            if total > artifact.size {
                return Err(Error::BadFile {
                    path: dest.to_owned(),
                    problem: format!(
                        "`{}` holds more than the {} bytes its manifest records",
                        artifact.uri, artifact.size
                    ),
                });
            }
            h.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .ctx(|| format!("cannot write `{}`", dest.display()))?;
        }
        // A tokio file hands writes to a background thread: without this the last chunk can
        // still be in flight (or lost) when the caller reads the file.
        file.sync_all()
            .await
            .ctx(|| format!("cannot write `{}`", dest.display()))?;
        Ok(hex::encode(h.finalize()))
    }
}
