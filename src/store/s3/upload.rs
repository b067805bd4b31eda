//! Putting a build's files into S3, and taking them out again when the publish cannot finish.
//!
//! Large files go up as multipart uploads whose parts are sent in parallel, each read into
//! memory only while it is sent, so memory stays bounded by part size × parallelism whatever
//! the file size. Every object and part carries a SHA-256 that the server checks. Every
//! multipart upload is tracked from the moment it exists, so a failed or cancelled publish
//! can abort it: an unfinished upload is invisible in listings, yet stored and billed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::S3Store;
use crate::aws;
use crate::error::{Error, IoContext, Result};

/// Files at least this large go up as multipart uploads (S3's minimum part is 5 MiB).
pub const PART_SIZE: u64 = 8 << 20;
pub const PARALLEL_PARTS: usize = 4;
/// S3 allows at most this many parts; larger files get larger parts.
const MAX_PARTS: u64 = 10_000;

/// Reports bytes as they are stored.
pub type Sent = Arc<dyn Fn(u64) + Send + Sync>;

/// One publish's uploads: what it has open, so that cleanup can abort it.
pub struct Uploader<'a> {
    pub store: &'a S3Store,
    pub sent: Sent,
    /// (key, upload id) of every multipart upload created and not yet completed or aborted.
    pub open: Mutex<Vec<(String, String)>>,
}

/// The part size for a file of `size` bytes: at least [`PART_SIZE`], in whole MiB, and large
/// enough to stay under S3's part count limit.
pub fn part_size(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    needed.max(PART_SIZE)
}

impl Uploader<'_> {
    pub async fn put_file(&self, path: &Path, key: &str) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .ctx(|| format!("cannot stat `{}`", path.display()))?
            .len();
        if size >= PART_SIZE {
            return self.put_multipart(path, key, size).await;
        }
        let bytes = tokio::fs::read(path)
            .await
            .ctx(|| format!("cannot read `{}`", path.display()))?;
        self.put_bytes(bytes, key).await?;
        (self.sent)(size);
        Ok(())
    }

    /// One object from memory (small files, and the checksum file and manifest, which do not
    /// count as artifact bytes in the progress figures).
    pub async fn put_bytes(&self, bytes: Vec<u8>, key: &str) -> Result<()> {
        let s = self.store;
        s.client
            .put_object()
            .bucket(&s.url.bucket)
            .key(key)
            .checksum_sha256(b64_sha256(&bytes))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s.fail("upload", key, e))?;
        Ok(())
    }

    async fn put_multipart(&self, path: &Path, key: &str, size: u64) -> Result<()> {
        let s = self.store;
        let created = s
            .client
            .create_multipart_upload()
            .bucket(&s.url.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| s.fail("multipart start", key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::other(format!("S3 returned no upload id for `{key}`")))?
            .to_owned();
        let entry = (key.to_owned(), upload_id.clone());
        self.open.lock().unwrap().push(entry.clone());
        let parts = self.upload_parts(path, key, size, &upload_id).await?;
        s.client
            .complete_multipart_upload()
            .bucket(&s.url.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s.fail("multipart completion", key, e))?;
        self.open.lock().unwrap().retain(|u| *u != entry);
        Ok(())
    }

    async fn upload_parts(
        &self,
        path: &Path,
        key: &str,
        size: u64,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let part = part_size(size);
        let count = size.div_ceil(part);
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
        // Dropping the set (on error or cancellation) aborts the parts still in flight.
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::with_capacity(count as usize);
        for index in 0..count {
            // Waiting for a permit before reading the part is what bounds memory. Finished
            // parts are collected meanwhile, so a failed part stops the loop early.
            let permit = loop {
                tokio::select! {
                    biased;
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                        parts.push(joined.map_err(|source| Error::Task { what: "an upload task", source })??);
                    }
                    p = limit.clone().acquire_owned() => break p.expect("semaphore open"),
                }
            };
            let job = PartJob {
                client: self.store.client.clone(),
                bucket: self.store.url.bucket.clone(),
                key: key.to_owned(),
                upload_id: upload_id.to_owned(),
                path: path.to_owned(),
                number: index as i32 + 1,
                offset: index * part,
                len: part.min(size - index * part) as usize,
                sent: self.sent.clone(),
            };
            tasks.spawn(async move {
                let _permit = permit;
                job.send().await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            parts.push(joined.map_err(|source| Error::Task {
                what: "an upload task",
                source,
            })??);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

struct PartJob {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: std::path::PathBuf,
    number: i32,
    offset: u64,
    len: usize,
    sent: Sent,
}

impl PartJob {
    async fn send(self) -> Result<CompletedPart> {
        let path = &self.path;
        let mut f = tokio::fs::File::open(path)
            .await
            .ctx(|| format!("cannot open `{}`", path.display()))?;
        f.seek(std::io::SeekFrom::Start(self.offset))
            .await
            .ctx(|| format!("cannot seek in `{}`", path.display()))?;
        let mut buf = vec![0u8; self.len];
        f.read_exact(&mut buf)
            .await
            .ctx(|| format!("cannot read `{}`", path.display()))?;
        let sum = b64_sha256(&buf);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(self.number)
            .checksum_sha256(&sum)
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| {
                aws::error(
                    format!(
                        "S3 upload of part {} of `s3://{}/{}`",
                        self.number, self.bucket, self.key
                    ),
                    e,
                )
            })?;
        (self.sent)(self.len as u64);
        Ok(CompletedPart::builder()
            .part_number(self.number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            .checksum_sha256(sum)
            .build())
    }
}

impl S3Store {
    /// Removes every trace of a publish under `prefix`: aborts the multipart uploads it knows
    /// of (`open`) and any other unfinished one under the prefix, then deletes the objects.
    /// Errors are returned, not swallowed: the caller keeps the journal entry so `runner gc`
    /// can try again.
    pub async fn clean(&self, prefix: &str, open: &[(String, String)]) -> Result<()> {
        let bucket = &self.url.bucket;
        let mut uploads: Vec<(String, String)> = open.to_vec();
        match self.unfinished_uploads(prefix).await {
            Ok(found) => uploads.extend(found),
            // Some S3-compatible servers cannot list uploads; the known ones are still aborted.
            Err(e) if !open.is_empty() && e.aws_code() == Some("NotImplemented") => {}
            Err(e) => return Err(e),
        }
        self.abort(uploads).await?;
        for key in self.keys_under(prefix).await? {
            self.client
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.fail("delete", &key, e))?;
        }
        Ok(())
    }

    /// Aborts these multipart uploads; one that is already gone counts as aborted.
    pub(super) async fn abort(&self, mut uploads: Vec<(String, String)>) -> Result<()> {
        uploads.sort();
        uploads.dedup();
        for (key, id) in uploads {
            let r = self
                .client
                .abort_multipart_upload()
                .bucket(&self.url.bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await;
            if let Err(e) = r {
                let gone = e
                    .as_service_error()
                    .is_some_and(|se| se.is_no_such_upload())
                    || aws::status(&e) == Some(404);
                if !gone {
                    return Err(self.fail("abort of the multipart upload", &key, e));
                }
            }
        }
        Ok(())
    }

    /// (key, upload id) of every unfinished multipart upload under `prefix`.
    pub async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = vec![];
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.url.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.fail("listing of unfinished uploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_owned(), id.to_owned()));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Every object key under `prefix`, across pages.
    pub async fn keys_under(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = vec![];
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("listing", prefix, e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(out)
    }
}

pub fn b64_sha256(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_under_the_limit() {
        assert_eq!(part_size(1), PART_SIZE);
        assert_eq!(part_size(80 << 30), PART_SIZE + (1 << 20));
        let huge = 5u64 << 40; // 5 TiB, S3's largest object
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
        assert_eq!(part_size(huge) % (1 << 20), 0);
    }
}
