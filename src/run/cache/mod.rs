//! A target's build cache through the pipeline: the generation its machine reads (chosen
//! before the machine exists), put in place before the script, saved once the artifacts are
//! out, made the key's newest only once the build is published. A cache comes from this
//! host's caches as a disk ([`crate::cache`]) where the machine takes one, else from the
//! bucket the target publishes to as an archive ([`crate::store::caches`]); the steps of the
//! latter are in `cache_bucket.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod bucket;

pub use bucket::abandon_all;

use super::Run;
use super::inputs::Inputs;
use crate::cache::{Generation, Key, Pending};
use crate::config::{CacheTransfer, Target};
use crate::error::{Error, Result, joined};
use crate::logs::LogSink;
use crate::machine::Lease;
use crate::manifest::{CacheRecord, FileName, Sha256};
use crate::store::ArtifactStore;
use crate::store::caches::{Newest, Reserved};

/// The cache one machine of a target reads.
pub struct Slot {
    pub key: Key,
    pub paths: Vec<String>,
    pub from: From,
}

/// Where a slot's generation is.
pub enum From {
    /// On this host, attached to the machine as a disk.
    Disk(Generation),
    /// In the target's store, fetched by the machine (`None`: the key has none yet).
    Bucket {
        store: Arc<dyn ArtifactStore>,
        newest: Option<Newest>,
        /// Set when the machine could not use `newest` and started empty.
        started_empty: AtomicBool,
    },
}

impl Slot {
    /// The generation's image, for a machine that attaches it.
    pub fn disk(&self) -> Option<std::path::PathBuf> {
        match &self.from {
            From::Disk(g) => Some(g.path.clone()),
            From::Bucket { .. } => None,
        }
    }

    /// The generation the build read and its digest: an empty cache is generation 0 with the
    /// digest of nothing.
    fn read(&self) -> (u64, String) {
        match &self.from {
            From::Disk(g) => (g.n, g.sha256.clone()),
            From::Bucket {
                newest: Some(n),
                started_empty,
                ..
            } if !started_empty.load(Ordering::SeqCst) => (n.n, n.sha256.as_str().to_owned()),
            From::Bucket { .. } => (0, Sha256::of(b"").as_str().to_owned()),
        }
    }
}

/// The next generation, saved but not yet the key's newest, with what the manifest says of it.
pub struct Sealed {
    pub saved: Saved,
    pub record: CacheRecord,
}

pub enum Saved {
    /// Flattened on this host.
    Disk(Pending),
    /// Uploaded to the store and checked there.
    Bucket {
        store: Arc<dyn ArtifactStore>,
        reserved: Reserved,
        bytes: u64,
        sha256: Sha256,
    },
}

/// The generation `t`'s machine starts from; `None` when the target caches nothing, the run
/// builds without caches, or no way to carry the cache exists (said in the log).
pub async fn slot(run: &Run, t: &Target, i: &Inputs, log: &LogSink) -> Result<Option<Slot>> {
    let (Some(decl), Some(caches)) = (&t.cache, &run.caches) else {
        if t.cache.is_some() {
            log.note("cache: not used (--no-cache, or a reproduction)");
        }
        return Ok(None);
    };
    let setting = |problem: String| Error::TargetSetting {
        target: t.name.clone(),
        problem,
    };
    let name = match &decl.key {
        Some(k) => (k.as_str(), true),
        None => (t.name.as_str(), false),
    };
    let recipe = i.declared.origin.digest();
    let attaches = i.declared.backend.attaches_disks();
    let in_bucket = i.store.caches().is_some();
    match (decl.transfer, attaches, in_bucket) {
        (CacheTransfer::Attach, false, _) => Err(setting(format!(
            "cache_transfer = \"attach\", but builder `{}` cannot attach disks",
            t.builder.name
        ))),
        (CacheTransfer::Auto | CacheTransfer::Attach, true, _) => {
            let (key, about) = Key::of(&run.project, name, &decl.paths, &recipe);
            let fs_bytes = run.limits.max_cache.0.saturating_mul(2);
            let (caches, key2) = (caches.clone(), key.clone());
            let generation = joined(
                "opening the build cache",
                tokio::task::spawn_blocking(move || caches.current(&key2, &about, fs_bytes)),
            )
            .await?;
            log.note(&format!(
                "cache: {} generation {} (sha256 {})",
                key.as_str(),
                generation.n,
                generation.sha256
            ));
            let from = From::Disk(generation);
            Ok(Some(Slot {
                key,
                paths: decl.paths.clone(),
                from,
            }))
        }
        (_, _, true) => bucket::slot(run, (name, decl, &recipe), i, log).await,
        (CacheTransfer::Fetch, _, false) => Err(setting(
            "cache_transfer = \"fetch\" needs a target that publishes to S3".into(),
        )),
        (CacheTransfer::Auto, false, false) => {
            log.note(&format!(
                "cache: builder `{}`'s machines take no cache disk and the target publishes \
                 to no bucket; building without the cache",
                t.builder.name
            ));
            Ok(None)
        }
    }
}

/// Puts the cache in place in the guest, before the script.
pub async fn mount(lease: &Lease, slot: &Slot, log: &LogSink) -> Result<()> {
    match &slot.from {
        From::Disk(_) => crate::guest::cache::mount(lease.guest.as_ref(), &slot.paths, log).await,
        From::Bucket { .. } => bucket::fetch(lease, slot, log).await,
    }
}

/// Saves the machine's cache as the next generation, refused over `max_cache_size`:
/// nothing is published before this passed.
pub async fn seal(run: &Run, lease: &Lease, slot: &Slot, log: &LogSink) -> Result<Sealed> {
    let (n, read_sha256) = slot.read();
    let (saved, sha256) = match &slot.from {
        From::Disk(_) => {
            let pending = flatten(run, lease, slot, log).await?;
            let sha256 = pending.sha256.clone();
            (Saved::Disk(pending), sha256)
        }
        From::Bucket { store, newest, .. } => {
            // Numbered after the newest the bucket named, even if this machine could not use
            // it: generations only count up, so pruning never spares a stale one.
            let next = newest.as_ref().map_or(0, |g| g.n) + 1;
            let saved = bucket::save(run, lease, slot, (store, next), log).await?;
            let Saved::Bucket { sha256, .. } = &saved else {
                unreachable!("a bucket cache saves to its bucket")
            };
            let sha256 = sha256.as_str().to_owned();
            (saved, sha256)
        }
    };
    let invalid = |source| Error::InvalidManifest {
        what: "this build's cache record".into(),
        field: "cache".into(),
        source,
    };
    let record = CacheRecord {
        key: FileName::new(slot.key.as_str()).map_err(invalid)?,
        generation: n,
        read_sha256: Sha256::new(read_sha256).map_err(invalid)?,
        saved_sha256: Sha256::new(sha256).map_err(invalid)?,
    };
    Ok(Sealed { saved, record })
}

/// Freezes the guest's cache disk and flattens the machine's layer on the host.
async fn flatten(run: &Run, lease: &Lease, slot: &Slot, log: &LogSink) -> Result<Pending> {
    crate::guest::cache::seal(lease.guest.as_ref(), log).await?;
    let layer = lease
        .machine
        .cache_layer
        .clone()
        .ok_or_else(|| Error::other("a cached machine without a cache layer"))?;
    let caches = run
        .caches
        .as_ref()
        .expect("a slot comes from the run's caches");
    let pending = match caches
        .flatten(&slot.key, &layer, run.limits.max_cache.0)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            // A machine kept for inspection (`--keep-failed`) must not hang on its cache.
            crate::guest::cache::thaw(lease.guest.as_ref(), log).await;
            return Err(e);
        }
    };
    log.note(&format!(
        "cache: next generation flattened ({:.1} MiB, sha256 {})",
        pending.bytes as f64 / f64::from(1 << 20),
        pending.sha256
    ));
    Ok(pending)
}

/// Makes the sealed generation the key's newest, once the build is published. A cache that
/// cannot be saved is logged, never a failed build.
pub async fn commit(run: &Run, sealed: Sealed, log: &LogSink) {
    let key = sealed.record.key.clone();
    let done = match sealed.saved {
        Saved::Disk(pending) => {
            joined(
                "committing the build cache",
                tokio::task::spawn_blocking(move || pending.commit()),
            )
            .await
        }
        Saved::Bucket {
            store,
            reserved,
            bytes,
            sha256,
        } => bucket::commit(run, (&store, &reserved), bytes, &sha256, log).await,
    };
    match done {
        Ok(n) => log.note(&format!("cache: {key} generation {n} saved")),
        Err(e) => log.note(&format!(
            "cache: {key} not saved: {}",
            crate::error::chain(&e)
        )),
    }
}

/// Gives up a sealed generation (the build was not published): a disk's part goes with its
/// drop, a bucket's archive is deleted now.
pub async fn discard(run: &Run, sealed: Sealed) {
    if let Saved::Bucket {
        store, reserved, ..
    } = sealed.saved
    {
        bucket::abandon(run, &store, &reserved).await;
    }
}
