//! A target's build cache through the pipeline: the generation its machine reads (chosen
//! before the machine exists), mounted before the script, sealed and flattened once the
//! artifacts are out, committed only once the build is published. See [`crate::cache`].

use super::Run;
use super::inputs::Inputs;
use crate::cache::{Generation, Key, Pending};
use crate::config::Target;
use crate::error::{Result, joined};
use crate::logs::LogSink;
use crate::machine::Lease;
use crate::manifest::{CacheRecord, FileName, Sha256};

/// The cache one machine of a target reads.
pub struct Slot {
    pub key: Key,
    pub paths: Vec<String>,
    pub generation: Generation,
}

/// The flattened next generation, with what the manifest says of it.
pub struct Sealed {
    pub pending: Pending,
    pub record: CacheRecord,
}

/// The generation `t`'s machine starts from; `None` when the target caches nothing, the run
/// builds without caches, or its machines cannot take a cache disk (said in the log).
pub async fn slot(run: &Run, t: &Target, i: &Inputs, log: &LogSink) -> Result<Option<Slot>> {
    let (Some(decl), Some(caches)) = (&t.cache, &run.caches) else {
        if t.cache.is_some() {
            log.note("cache: not used (--no-cache, or a reproduction)");
        }
        return Ok(None);
    };
    if !i.declared.backend.attaches_disks() {
        log.note(&format!(
            "cache: builder `{}`'s machines take no cache disk; building without the cache",
            t.builder.name
        ));
        return Ok(None);
    }
    let name = match &decl.key {
        Some(k) => (k.as_str(), true),
        None => (t.name.as_str(), false),
    };
    let (key, about) = Key::of(&run.project, name, &decl.paths, &i.declared.origin.digest());
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
    Ok(Some(Slot {
        key,
        paths: decl.paths.clone(),
        generation,
    }))
}

/// Mounts the cache in the guest, before the script.
pub async fn mount(lease: &Lease, slot: &Slot, log: &LogSink) -> Result<()> {
    crate::guest::cache::mount(lease.guest.as_ref(), &slot.paths, log).await
}

/// Freezes the guest's cache and flattens the machine's layer into the next generation,
/// refused over `max_cache_size`: nothing is published before this passed.
pub async fn seal(run: &Run, lease: &Lease, slot: &Slot, log: &LogSink) -> Result<Sealed> {
    crate::guest::cache::seal(lease.guest.as_ref(), log).await?;
    let layer = lease
        .machine
        .cache_layer
        .clone()
        .ok_or_else(|| crate::error::Error::other("a cached machine without a cache layer"))?;
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
    let invalid = |source| crate::error::Error::InvalidManifest {
        what: "this build's cache record".into(),
        field: "cache".into(),
        source,
    };
    let record = CacheRecord {
        key: FileName::new(slot.key.as_str()).map_err(invalid)?,
        generation: slot.generation.n,
        read_sha256: Sha256::new(slot.generation.sha256.clone()).map_err(invalid)?,
        saved_sha256: Sha256::new(pending.sha256.clone()).map_err(invalid)?,
    };
    Ok(Sealed { pending, record })
}

/// Makes the sealed generation the key's newest, once the build is published.
pub async fn commit(sealed: Sealed, log: &LogSink) {
    let key = sealed.record.key.clone();
    let done = joined(
        "committing the build cache",
        tokio::task::spawn_blocking(move || sealed.pending.commit()),
    )
    .await;
    match done {
        Ok(n) => log.note(&format!("cache: {key} generation {n} saved")),
        Err(e) => log.note(&format!(
            "cache: {key} not saved: {}",
            crate::error::chain(&e)
        )),
    }
}
