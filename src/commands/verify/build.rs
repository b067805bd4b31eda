//! A published build's checks: the provenance's signature, the records and every artifact
//! against the signed digests, and the statement against the manifest.

use tokio_util::sync::CancellationToken;

use super::{Check, Source, hash_blocking, matches_digest, signature};
use crate::beneath;
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::provenance::{self, keys::PublicKey};
use crate::store::Stored;

pub(super) async fn checks(
    source: &Source,
    stored: &Stored,
    key: &PublicKey,
    cancel: &CancellationToken,
) -> Vec<Check> {
    let (statement, signed) = signature(stored.provenance.as_deref(), provenance::FILE, key);
    let mut checks = vec![signed];
    let Some(statement) = statement else {
        return checks;
    };
    // The manifest's digest is taken over the very bytes `stored.manifest` was parsed from.
    let docs = [
        (crate::manifest::FILE, Some(&stored.manifest_bytes)),
        (crate::store::SHA256SUMS, stored.sha256sums.as_ref()),
    ];
    for (name, bytes) in docs {
        let got = bytes.map(|b| sha256_hex(b));
        checks.push(Check::new(
            name,
            matches_digest(got, statement.sha256_of(name)),
        ));
    }
    for a in &stored.manifest.artifacts {
        let r = match artifact_sha256(source, stored, a, cancel).await {
            Err(e) => Err(e),
            Ok(got) => matches_digest(Some(got), statement.sha256_of(&a.path)),
        };
        checks.push(Check::new(format!("artifact {}", a.path), r));
    }
    let disagree = provenance::disagreements(&statement, &stored.manifest);
    checks.push(Check::new(
        "manifest and provenance",
        if disagree.is_empty() {
            Ok("agree on target, inputs and artifacts".into())
        } else {
            Err(disagree.join("; "))
        },
    ));
    checks
}

/// The artifact's sha256, read no further than the size its manifest records.
async fn artifact_sha256(
    source: &Source,
    stored: &Stored,
    a: &ArtifactRecord,
    cancel: &CancellationToken,
) -> std::result::Result<String, String> {
    match source {
        Source::Dir(dir) => {
            let (dir, rel, size) = (dir.clone(), a.path.clone(), a.size);
            let cancel = cancel.clone();
            hash_blocking(move || beneath::sha256(&dir, &rel, Some(size), &cancel)).await
        }
        Source::Store { store, target } => fetched(store.as_ref(), target, stored, a)
            .await
            .map_err(|e| format!("cannot read it: {e}")),
    }
}

async fn fetched(
    store: &dyn crate::store::ArtifactStore,
    target: &str,
    stored: &Stored,
    a: &ArtifactRecord,
) -> Result<String> {
    let tmp = tempfile::NamedTempFile::new().map_err(|source| Error::Io {
        context: "cannot create a temporary file".into(),
        source,
    })?;
    store.fetch(target, &stored.manifest, a, tmp.path()).await
}
