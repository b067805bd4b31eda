//! Build caches in the bucket (see [`crate::store::caches`]), under the store's prefix:
//! `.runner/caches/<key>/newest.json`, the pointer, and `.runner/caches/<key>/g<n>-<nonce>/
//! cache.tar.zst`, one directory per generation. The nonce keeps two builds that both make
//! generation `n` from ever writing one object; the pointer alone says which is newest.
//!
//! Anyone who can write to the bucket can write a pointer, so a pointer is read capped and
//! typed, and the archive's key is rebuilt from its checked fields, never taken from it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use serde::{Deserialize, Serialize};

use super::upload::b64_sha256;
use super::{S3Store, journal};
use crate::error::{Error, Result};
use crate::manifest::Sha256;
use crate::store::caches::{BucketCaches, Newest, Reserved, Upload};

const POINTER: &str = "newest.json";
const ARCHIVE: &str = "cache.tar.zst";
/// How long a presigned download or upload stays valid: a build's life at most.
const URL_LIFE: Duration = Duration::from_secs(6 * 3600);

/// The journal entries of this process's reserved archives, by object key.
pub(super) type Entries = std::sync::Mutex<HashMap<String, journal::Entry>>;

/// What `newest.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    generation: u64,
    nonce: String,
    bytes: u64,
    sha256: Sha256,
}

fn nonce_ok(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl S3Store {
    fn cache_dir(&self, key: &str) -> String {
        format!("{}.runner/caches/{key}/", self.prefix_slash())
    }

    fn generation_dir(&self, key: &str, n: u64, nonce: &str) -> String {
        format!("{}g{n}-{nonce}/", self.cache_dir(key))
    }

    fn presign_config(&self, key: &str) -> Result<aws_sdk_s3::presigning::PresigningConfig> {
        aws_sdk_s3::presigning::PresigningConfig::expires_in(URL_LIFE).map_err(|e| Error::Aws {
            context: format!("presigning `{key}`"),
            code: None,
            summary: e.to_string(),
            source: Box::new(e),
        })
    }

    /// Deletes generation directories of `key` older than `newest - 1`: the newest two stay,
    /// and so does anything newer (a build that started later and has not committed yet).
    async fn prune_cache(&self, key: &str, newest: u64) -> Result<()> {
        let dir = self.cache_dir(key);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(&dir)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut old = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("listing", &dir, e))?;
            for p in page.common_prefixes().iter().filter_map(|p| p.prefix()) {
                let name = p.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                let n = name
                    .strip_prefix('g')
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(n, nonce)| nonce_ok(nonce).then_some(n))
                    .and_then(|n| n.parse::<u64>().ok());
                if n.is_some_and(|n| n + 1 < newest) {
                    old.push(p.to_owned());
                }
            }
        }
        for p in old {
            self.clean(&p, &[]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl BucketCaches for S3Store {
    async fn newest(&self, key: &str, max_bytes: u64) -> Result<Option<Newest>> {
        let at = format!("{}{POINTER}", self.cache_dir(key));
        let Some(bytes) = self.get_bytes(&at).await? else {
            return Ok(None);
        };
        let refused = |problem: String| Error::BadFile {
            path: self.uri_of(&at).into(),
            problem,
        };
        let p: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| refused(format!("is not a cache pointer runner wrote: {e}")))?;
        if !nonce_ok(&p.nonce) {
            return Err(refused("names no archive runner made".into()));
        }
        if p.bytes > max_bytes {
            return Err(refused(format!(
                "names an archive of {} bytes, over max_cache_size ({max_bytes})",
                p.bytes
            )));
        }
        let object = format!(
            "{}{ARCHIVE}",
            self.generation_dir(key, p.generation, &p.nonce)
        );
        let url = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(&object)
            .presigned(self.presign_config(&object)?)
            .await
            .map_err(|e| self.fail("presigning", &object, e))?
            .uri()
            .to_owned();
        Ok(Some(Newest {
            n: p.generation,
            bytes: p.bytes,
            sha256: p.sha256,
            url,
        }))
    }

    fn reserve(&self, key: &str, n: u64) -> Result<Reserved> {
        let dir = self.generation_dir(key, n, &hex::encode(rand::random::<[u8; 8]>()));
        let entry = journal::Entry::write(&self.journal, &self.url.bucket, &dir, &self.settings)?;
        let object = format!("{dir}{ARCHIVE}");
        self.caches.lock().unwrap().insert(object.clone(), entry);
        Ok(Reserved {
            key: key.to_owned(),
            n,
            object,
        })
    }

    async fn upload_url(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<Upload> {
        let sum = b64_sha256_of_hex(sha256);
        let presigned = self
            .client
            .put_object()
            .bucket(&self.url.bucket)
            .key(&r.object)
            .content_length(i64::try_from(bytes).unwrap_or(i64::MAX))
            .checksum_sha256(sum)
            .presigned(self.presign_config(&r.object)?)
            .await
            .map_err(|e| self.fail("presigning", &r.object, e))?;
        Ok(Upload {
            url: presigned.uri().to_owned(),
            headers: presigned
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    async fn check(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<()> {
        let head = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(&r.object)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.fail("check", &r.object, e))?;
        let want = b64_sha256_of_hex(sha256);
        let size = head.content_length().and_then(|n| u64::try_from(n).ok());
        if size != Some(bytes) || head.checksum_sha256() != Some(want.as_str()) {
            return Err(Error::BadFile {
                path: self.uri_of(&r.object).into(),
                problem: format!(
                    "holds {size:?} bytes of SHA-256 {:?}, not the {bytes} of {want} the \
                     machine announced",
                    head.checksum_sha256()
                ),
            });
        }
        Ok(())
    }

    async fn commit(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<()> {
        self.check(r, bytes, sha256).await?;
        let dir = r.object.trim_end_matches(ARCHIVE);
        let nonce = dir.trim_end_matches('/').rsplit('-').next().unwrap_or("");
        let pointer = Pointer {
            generation: r.n,
            nonce: nonce.to_owned(),
            bytes,
            sha256: sha256.clone(),
        };
        let body = serde_json::to_vec_pretty(&pointer).expect("a pointer serializes");
        let at = format!("{}{POINTER}", self.cache_dir(&r.key));
        self.client
            .put_object()
            .bucket(&self.url.bucket)
            .key(&at)
            .checksum_sha256(b64_sha256(&body))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail("upload", &at, e))?;
        if let Some(entry) = self.caches.lock().unwrap().remove(&r.object) {
            entry.finish();
        }
        // The generation is saved; an old one left behind costs space, not correctness.
        if let Err(e) = self.prune_cache(&r.key, r.n).await {
            tracing::warn!("cannot prune the build cache `{}`: {e}", r.key);
        }
        Ok(())
    }

    async fn abandon(&self, r: &Reserved) -> Result<()> {
        let dir = r.object.trim_end_matches(ARCHIVE);
        self.clean(dir, &[]).await?;
        if let Some(entry) = self.caches.lock().unwrap().remove(&r.object) {
            entry.finish();
        }
        Ok(())
    }
}

/// The base64 of a SHA-256 given in hex, as S3's checksum headers carry it.
fn b64_sha256_of_hex(sha256: &Sha256) -> String {
    let raw = hex::decode(sha256.as_str()).expect("a Sha256 is 64 hex digits");
    aws_smithy_types::base64::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_with_a_foreign_field_or_nonce_is_refused() {
        let ok = r#"{"generation":3,"nonce":"0123456789abcdef","bytes":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let p: Pointer = serde_json::from_str(ok).unwrap();
        assert!(nonce_ok(&p.nonce));
        let extra = ok.replace("\"bytes\"", "\"path\":\"../../x\",\"bytes\"");
        assert!(serde_json::from_str::<Pointer>(&extra).is_err());
        for bad in ["../../../etc", "0123456789ABCDEF", "0123456789abcde", ""] {
            assert!(!nonce_ok(bad), "{bad}");
        }
        let short_sum = ok.replace(&"a".repeat(64), "abc");
        assert!(serde_json::from_str::<Pointer>(&short_sum).is_err());
    }
}
