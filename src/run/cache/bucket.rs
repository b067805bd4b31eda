//! A build cache in the bucket a target publishes to, for machines that take no cache disk
//! (see [`crate::store::caches`]): the newest archive's pointer read (typed, capped) before
//! the machine boots, the archive fetched by the guest, the next one packed and uploaded by
//! the guest through a presigned URL the store holds to the size and SHA-256 the host signed,
//! and the pointer moved once the build is published.
//!
//! An uploaded archive is journaled from before its URL exists until it is committed or
//! deleted; the run deletes what is still uncommitted when it ends ([`abandon_all`]), and
//! `runner gc` what a killed runner left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{From, Saved, Slot};
use crate::cache::Key;
use crate::config::CacheDecl;
use crate::error::{Error, Result};
use crate::guest::cache_archive::{self, Archive};
use crate::logs::LogSink;
use crate::machine::Lease;
use crate::manifest::Sha256;
use crate::run::Run;
use crate::run::inputs::Inputs;
use crate::store::ArtifactStore;
use crate::store::caches::{BucketCaches, Reserved};

fn caches(store: &Arc<dyn ArtifactStore>) -> &dyn BucketCaches {
    store
        .caches()
        .expect("a bucket slot comes from a store with caches")
}

/// The slot of a cache kept in `i.store`. The store's prefix is the project's namespace
/// there, so the key holds no host path: every CI machine of one project shares it. A
/// pointer that is not what runner writes is logged and the build starts empty.
pub async fn slot(
    run: &Run,
    (name, decl, recipe): ((&str, bool), &CacheDecl, &str),
    i: &Inputs,
    log: &LogSink,
) -> Result<Option<Slot>> {
    let (key, _) = Key::of(std::path::Path::new(""), name, &decl.paths, recipe);
    let store = i.store.clone();
    let newest = match caches(&store)
        .newest(key.as_str(), run.limits.max_cache.0)
        .await
    {
        Ok(n) => n,
        Err(e @ Error::BadFile { .. }) => {
            log.note(&format!("cache: {e}; starting empty"));
            None
        }
        Err(e) => return Err(e),
    };
    log.note(&match &newest {
        Some(n) => format!(
            "cache: {} generation {} from the bucket ({} bytes, sha256 {})",
            key.as_str(),
            n.n,
            n.bytes,
            n.sha256
        ),
        None => format!(
            "cache: {} has no generation in the bucket yet",
            key.as_str()
        ),
    });
    Ok(Some(Slot {
        key,
        paths: decl.paths.clone(),
        from: From::Bucket {
            store,
            newest,
            started_empty: AtomicBool::new(false),
        },
    }))
}

/// The guest fetches the slot's archive and binds the cached paths from it.
pub async fn fetch(lease: &Lease, slot: &Slot, log: &LogSink) -> Result<()> {
    let From::Bucket {
        newest,
        started_empty,
        ..
    } = &slot.from
    else {
        unreachable!("fetch is for bucket slots")
    };
    let alias = lease.machine.loopback_alias;
    let connect = newest
        .as_ref()
        .and_then(|n| crate::run::transfer::connect_to(&n.url, alias));
    let archive = newest.as_ref().map(|n| Archive {
        url: &n.url,
        sha256: n.sha256.as_str(),
        bytes: n.bytes,
        connect_to: connect.as_deref(),
    });
    let guest = lease.guest.as_ref();
    if !cache_archive::fetch(guest, &slot.paths, archive.as_ref(), log).await? {
        started_empty.store(true, Ordering::SeqCst);
        log.note("cache: the generation in the bucket could not be used; starting empty");
    }
    Ok(())
}

/// The guest packs its cache; within `max_cache_size` it is uploaded as generation `next`
/// and checked in the store. Anything uploaded is deleted again on failure.
pub async fn save(
    run: &Run,
    lease: &Lease,
    slot: &Slot,
    (store, next): (&Arc<dyn ArtifactStore>, u64),
    log: &LogSink,
) -> Result<Saved> {
    let guest = lease.guest.as_ref();
    let (bytes, sha256) = cache_archive::pack(guest, log).await?;
    let sha256 =
        Sha256::new(sha256).map_err(|e| Error::other(format!("the cache's digest: {e}")))?;
    let limit = run.limits.max_cache.0;
    if bytes > limit {
        return Err(Error::CacheRefused {
            key: slot.key.as_str().to_owned(),
            problem: format!(
                "the new generation's archive holds {:.1} MiB, over max_cache_size {}M; the \
                 previous generation stays (raise [limits] max_cache_size, or cache less)",
                bytes as f64 / (1u64 << 20) as f64,
                limit.div_ceil(1 << 20)
            ),
        });
    }
    let reserved = caches(store).reserve(slot.key.as_str(), next)?;
    run.cache_uploads
        .lock()
        .unwrap()
        .push((store.clone(), reserved.clone()));
    let up = async {
        let up = caches(store).upload_url(&reserved, bytes, &sha256).await?;
        let connect = crate::run::transfer::connect_to(&up.url, lease.machine.loopback_alias);
        cache_archive::push(guest, (&up.url, &up.headers), connect.as_deref(), log).await?;
        caches(store).check(&reserved, bytes, &sha256).await
    };
    if let Err(e) = up.await {
        abandon(run, store, &reserved).await;
        return Err(e);
    }
    log.note(&format!(
        "cache: next generation uploaded ({:.1} MiB, sha256 {sha256})",
        bytes as f64 / f64::from(1 << 20)
    ));
    Ok(Saved::Bucket {
        store: store.clone(),
        reserved,
        bytes,
        sha256,
    })
}

/// Moves the key's pointer to the uploaded archive; one that cannot be is deleted.
pub async fn commit(
    run: &Run,
    (store, reserved): (&Arc<dyn ArtifactStore>, &Reserved),
    bytes: u64,
    sha256: &Sha256,
    log: &LogSink,
) -> Result<u64> {
    match caches(store).commit(reserved, bytes, sha256).await {
        Ok(()) => {
            forget(run, reserved);
            Ok(reserved.n)
        }
        Err(e) => {
            log.note(&format!(
                "cache: cannot commit: {}",
                crate::error::chain(&e)
            ));
            abandon(run, store, reserved).await;
            Err(e)
        }
    }
}

/// Deletes an uploaded archive; one that cannot be deleted stays journaled for `runner gc`.
pub async fn abandon(run: &Run, store: &Arc<dyn ArtifactStore>, reserved: &Reserved) {
    match caches(store).abandon(reserved).await {
        Ok(()) => forget(run, reserved),
        Err(e) => eprintln!(
            "runner: cannot remove the build cache archive {}: {e} (`runner gc` will)",
            reserved.object
        ),
    }
}

fn forget(run: &Run, reserved: &Reserved) {
    run.cache_uploads
        .lock()
        .unwrap()
        .retain(|(_, r)| r != reserved);
}

/// After the run: every archive uploaded but never committed (a build cancelled or timed
/// out after its cache was saved) is deleted.
pub async fn abandon_all(run: &Run) {
    let left = run.cache_uploads.lock().unwrap().clone();
    for (store, reserved) in left {
        abandon(run, &store, &reserved).await;
    }
}
