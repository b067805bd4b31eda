//! Artifacts in S3 (or any S3-compatible store): `<prefix>/<target>/<build id>/<file>`, where
//! the build id is `<first 16 hex of the inputs digest>-<start time>`. Files go first, then
//! `SHA256SUMS`, then `manifest.json`: a manifest's presence means its build is complete.
//!
//! How files go up is `upload`'s business. This module decides what a publish means: a
//! journal entry first (so a runner that dies mid-upload leaves a trail `runner gc` follows),
//! then the files, then the manifest; on failure, cancellation or timeout, every multipart
//! upload is aborted and every object under the build's prefix deleted, so neither a partial
//! build nor a dangling upload remains.

pub mod journal;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use sha2::{Digest, Sha256};

use self::upload::Uploader;
use super::{ArtifactStore, Publishing, SHA256SUMS};
use crate::artifacts::{ArtifactFile, sha256sums};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, ArtifactRecord, Manifest};
use crate::paths::Dirs;

/// `s3://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl std::str::FromStr for S3Url {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}` is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{s}` names no bucket"));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }
}

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
}

impl S3Store {
    pub async fn connect(url: S3Url, settings: &Settings, dirs: &Dirs) -> S3Store {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5));
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
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
        }
    }

    /// Fails fast, before any machine boots, when the bucket is missing or not ours to use:
    /// a typo in a bucket name should not cost a whole build.
    pub async fn preflight(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.url.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let why = match e.as_service_error() {
                    Some(se) if se.is_not_found() => "NoSuchBucket: it does not exist".to_owned(),
                    _ => match e.raw_response().map(|r| r.status().as_u16()) {
                        Some(403) => {
                            "access denied (check the credentials and the bucket policy)".to_owned()
                        }
                        Some(404) => "NoSuchBucket: it does not exist".to_owned(),
                        _ => brief(&e),
                    },
                };
                Error::other(format!(
                    "cannot use bucket `s3://{}/{}`: {why}",
                    self.url.bucket, self.url.prefix
                ))
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

    fn build_prefix(&self, target: &str, build_id: &str) -> String {
        let mut p = String::new();
        if !self.url.prefix.is_empty() {
            p.push_str(&self.url.prefix);
            p.push('/');
        }
        format!("{p}{target}/{build_id}/")
    }

    fn uri_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.url.bucket)
    }

    fn fail<E, R>(&self, what: &str, key: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> Error
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug,
    {
        Error::other(format!(
            "S3 {what} of `s3://{}/{key}` failed: {}",
            self.url.bucket,
            brief(&e)
        ))
    }

    /// The newest complete build of `target` whose build id starts with `id_prefix`.
    async fn find_manifest(&self, target: &str, id_prefix: &str) -> Option<(String, Manifest)> {
        // `<prefix>/<target>/<id_prefix>`: with an empty id, the target's directory itself.
        let mut under = self
            .build_prefix(target, id_prefix)
            .trim_end_matches('/')
            .to_owned();
        if id_prefix.is_empty() {
            under.push('/'); // `<target>/`, so that target `t` never matches `t2`
        }
        let list = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(under)
            .send()
            .await
            .ok()?;
        let mut keys: Vec<String> = list
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter(|k| k.ends_with(&format!("/{}", manifest::FILE)))
            .map(str::to_owned)
            .collect();
        // Build ids end in their start time: the newest sorts last by that number.
        keys.sort_by_key(|k| {
            let id = k.rsplit('/').nth(1).unwrap_or_default();
            id.rsplit('-')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        });
        let key = keys.pop()?;
        let body = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .send()
            .await
            .ok()?;
        let bytes = body.body.collect().await.ok()?.into_bytes();
        let tmp = tempfile::NamedTempFile::new().ok()?;
        std::fs::write(tmp.path(), &bytes).ok()?;
        Some((key, Manifest::read(tmp.path()).ok()?))
    }
}

pub fn build_id(m: &Manifest) -> String {
    manifest::build_id(&m.inputs_digest, m.started_unix)
}

/// An S3 error in one line: the service's code and message when it answered, else the
/// transport's account (connection refused, timeout) — never the whole response dump.
fn brief<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => match (se.code(), se.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_owned(),
            _ => se.to_string(),
        },
        None => DisplayErrorContext(e).to_string(),
    }
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
            for (name, bytes) in [
                (SHA256SUMS, sha256sums(files).into_bytes()),
                (manifest::FILE, manifest.to_json()),
            ] {
                let key = format!("{prefix}{name}");
                up.put_bytes(bytes, &key).await?;
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
            Err(e) => Err(Error::other(format!(
                "{}; cleaning up `s3://{}/{prefix}` also failed ({e}); it is recorded in `{}` and \
                 `runner gc --force` finishes the cleanup once the store is reachable",
                match &cause {
                    Error::Cancelled => "cancelled".to_owned(),
                    other => crate::error::chain(other),
                },
                self.url.bucket,
                entry.path().display()
            ))),
        }
    }

    async fn published(
        &self,
        target: &str,
        inputs_digest: &str,
    ) -> Option<(Manifest, Vec<PathBuf>)> {
        let (key, m) = self.find_manifest(target, &inputs_digest[..16]).await?;
        let prefix = key.trim_end_matches(manifest::FILE);
        let mut uris: Vec<PathBuf> = m
            .artifacts
            .iter()
            .map(|a| PathBuf::from(a.uri.clone()))
            .collect();
        uris.push(PathBuf::from(self.uri_of(&format!("{prefix}{SHA256SUMS}"))));
        uris.push(PathBuf::from(self.uri_of(&key)));
        Some((m, uris))
    }

    async fn latest(&self, target: &str) -> Result<Option<Manifest>> {
        Ok(self.find_manifest(target, "").await.map(|(_, m)| m))
    }

    async fn fetch(
        &self,
        _target: &str,
        _build: &Manifest,
        artifact: &ArtifactRecord,
        dest: &Path,
    ) -> Result<String> {
        let key = artifact
            .uri
            .strip_prefix(&format!("s3://{}/", self.url.bucket))
            .ok_or_else(|| {
                Error::other(format!(
                    "`{}` is not in bucket `{}`",
                    artifact.uri, self.url.bucket
                ))
            })?
            .to_owned();
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
        while let Some(chunk) = body.try_next().await.map_err(|e| {
            Error::other(format!(
                "download of `s3://{}/{key}` broke off: {e}",
                self.url.bucket
            ))
        })? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        let u: S3Url = "s3://bucket/a/b/".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", "a/b"));
        let u: S3Url = "s3://bucket".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert!("http://x".parse::<S3Url>().is_err());
        assert!("s3:///x".parse::<S3Url>().is_err());
    }
}
