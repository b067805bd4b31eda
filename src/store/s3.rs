//! Artifacts in S3 (or any S3-compatible store): `<prefix>/<target>/<build id>/<file>`, where
//! the build id is `<first 16 hex of the inputs digest>-<start time>`. Files go first, then
//! `SHA256SUMS`, then `manifest.json`: a manifest's presence means its build is complete.
//!
//! Uploads are streamed from the staging directory: large files as multipart uploads whose
//! parts go up in parallel, each part read into memory only while it is sent, so memory is
//! bounded by part size × parallelism. Every object and part carries a SHA-256 the server
//! checks. A failed publish aborts its multipart upload and deletes what it already put, so
//! no partial build and no dangling upload remain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ArtifactStore, SHA256SUMS};
use crate::artifacts::{ArtifactFile, sha256sums};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, ArtifactRecord, Manifest};

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
    part_size: usize,
    parallel_parts: usize,
    staging_root: PathBuf,
}

/// Files at least this large go up as multipart uploads (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 << 20;
const PARALLEL_PARTS: usize = 4;

impl S3Store {
    pub async fn connect(url: S3Url, settings: &Settings, staging_root: &Path) -> S3Store {
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
            .build();
        S3Store {
            client: Client::from_conf(config),
            url,
            part_size: PART_SIZE,
            parallel_parts: PARALLEL_PARTS,
            staging_root: staging_root.to_owned(),
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

    async fn put_file(&self, path: &Path, key: &str) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .ctx(|| format!("cannot stat `{}`", path.display()))?
            .len() as usize;
        if size >= self.part_size {
            return self.put_multipart(path, key, size).await;
        }
        let bytes = tokio::fs::read(path)
            .await
            .ctx(|| format!("cannot read `{}`", path.display()))?;
        self.put_bytes(bytes, key).await
    }

    async fn put_bytes(&self, bytes: Vec<u8>, key: &str) -> Result<()> {
        let sum = b64_sha256(&bytes);
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(key)
            .checksum_sha256(sum)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.fail("upload", key, e))?;
        Ok(())
    }

    async fn put_multipart(&self, path: &Path, key: &str, size: usize) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| self.fail("multipart start", key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::other(format!("S3 returned no upload id for `{key}`")))?
            .to_owned();
        let result = self.upload_parts(path, key, size, &upload_id).await;
        let completed = match result {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.url.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.fail("multipart completion", key, e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Never leave a dangling upload: it is invisible in listings and billed.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.url.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completed
    }

    async fn upload_parts(
        &self,
        path: &Path,
        key: &str,
        size: usize,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let count = size.div_ceil(self.part_size);
        let limit = Arc::new(tokio::sync::Semaphore::new(self.parallel_parts));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..count {
            let permit = limit.clone().acquire_owned().await.expect("semaphore open");
            let (client, bucket, key, upload_id, path) = (
                self.client.clone(),
                self.url.bucket.clone(),
                key.to_owned(),
                upload_id.to_owned(),
                path.to_owned(),
            );
            let (offset, len) = (
                index * self.part_size,
                self.part_size.min(size - index * self.part_size),
            );
            tasks.spawn(async move {
                let _permit = permit;
                let mut f = tokio::fs::File::open(&path)
                    .await
                    .ctx(|| format!("cannot open `{}`", path.display()))?;
                f.seek(std::io::SeekFrom::Start(offset as u64))
                    .await
                    .ctx(|| "cannot seek")?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf)
                    .await
                    .ctx(|| format!("cannot read `{}`", path.display()))?;
                let sum = b64_sha256(&buf);
                let number = index as i32 + 1;
                let out = client
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_sha256(&sum)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| {
                        Error::other(format!(
                            "S3 upload of part {number} of `s3://{bucket}/{key}` failed: {}",
                            DisplayErrorContext(e)
                        ))
                    })?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .checksum_sha256(sum)
                        .build(),
                )
            });
        }
        let mut parts = Vec::with_capacity(count);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(p)) => parts.push(p),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(Error::other(format!("upload task failed: {e}"))),
            }
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    /// Deletes every object under `prefix` (a failed publish's own build prefix).
    async fn delete_prefix(&self, prefix: &str) {
        let Ok(list) = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(prefix)
            .send()
            .await
        else {
            return;
        };
        for o in list.contents() {
            if let Some(k) = o.key() {
                let _ = self
                    .client
                    .delete_object()
                    .bucket(&self.url.bucket)
                    .key(k)
                    .send()
                    .await;
            }
        }
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

fn b64_sha256(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(Sha256::digest(bytes))
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
    ) -> Result<Vec<PathBuf>> {
        let prefix = self.build_prefix(target, &build_id(manifest));
        let upload = async {
            let mut out = Vec::new();
            for f in files {
                let key = format!("{prefix}{}", f.path.display());
                self.put_file(&staged.path().join(&f.path), &key).await?;
                out.push(PathBuf::from(self.uri_of(&key)));
            }
            for (name, bytes) in [
                (SHA256SUMS, sha256sums(files).into_bytes()),
                (manifest::FILE, manifest.to_json()),
            ] {
                let key = format!("{prefix}{name}");
                self.put_bytes(bytes, &key).await?;
                out.push(PathBuf::from(self.uri_of(&key)));
            }
            Ok::<_, Error>(out)
        };
        match upload.await {
            Ok(out) => Ok(out),
            Err(e) => {
                self.delete_prefix(&prefix).await;
                Err(e)
            }
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
