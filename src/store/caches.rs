//! Build caches kept in a store's bucket, for machines that take no cache disk (remote
//! ones). A generation is one compressed archive that the guest itself downloads and
//! uploads by presigned URL, the way it fetches a context pack; the host never reads an
//! archive's bytes, only the store's word on their size and SHA-256.
//!
//! A key's newest generation is named by a small pointer object the host writes once the
//! build is published: the last build to publish wins, as for a local cache. An archive
//! being uploaded is journaled (like a publish) before its URL exists, so `runner gc` removes
//! one a killed runner left; a run removes its own uncommitted ones before it exits.

use async_trait::async_trait;

use crate::error::Result;
use crate::manifest::Sha256;

/// The newest generation of a key, as its pointer says (read capped and typed).
#[derive(Debug, Clone)]
pub struct Newest {
    pub n: u64,
    pub bytes: u64,
    pub sha256: Sha256,
    /// A presigned download of the archive.
    pub url: String,
}

/// The object a machine may upload the next generation to; journaled until committed or
/// abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub key: String,
    pub n: u64,
    /// The object's key in the bucket.
    pub object: String,
}

/// A presigned upload: the URL and the headers the upload must send as signed.
#[derive(Debug, Clone)]
pub struct Upload {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

#[async_trait]
pub trait BucketCaches: Send + Sync {
    /// `key`'s newest generation, `None` when it has none. A pointer that is not what runner
    /// writes, or names an archive over `max_bytes`, is an error.
    async fn newest(&self, key: &str, max_bytes: u64) -> Result<Option<Newest>>;

    /// Journals generation `n` of `key`'s archive object, before any URL for it exists.
    fn reserve(&self, key: &str, n: u64) -> Result<Reserved>;

    /// A presigned upload that the store accepts only with exactly `bytes` bytes of SHA-256
    /// `sha256`.
    async fn upload_url(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<Upload>;

    /// Whether the store holds the reserved object with exactly that size and SHA-256.
    async fn check(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<()>;

    /// Makes the reserved object `key`'s newest generation, prunes older ones, and forgets
    /// the journal entry.
    async fn commit(&self, r: &Reserved, bytes: u64, sha256: &Sha256) -> Result<()>;

    /// Deletes the reserved object; the journal entry goes once it is gone.
    async fn abandon(&self, r: &Reserved) -> Result<()>;
}
