//! Which published builds a store may hand out. Anyone with write access to a store can plant
//! a build in it, so with a verifying key configured a build counts only if its provenance
//! verifies with that key and the signed statement covers the manifest's exact bytes (which
//! in turn list every artifact's sha256). Without a key every well-formed build of the
//! target counts, as before signing existed.

use std::path::Path;

use super::{Records, Stored};
use crate::beneath::MAX_RECORD;
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::provenance::{self, Untrusted, keys::PublicKey, keys::SigningKey};

/// The key builds must be signed with, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trust(pub Option<PublicKey>);

/// Why a stored build is not used.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("it is a build of `{0}`")]
    OtherTarget(String),
    #[error("it lies under build id `{found}`, but its manifest is build `{recorded}`")]
    Misplaced { found: String, recorded: String },
    #[error("it has no {}", provenance::FILE)]
    NoProvenance,
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error("its signed provenance does not cover this manifest")]
    NotCovered,
    #[error("its provenance and manifest disagree: {0}")]
    Disagree(String),
}

impl Trust {
    /// Whether `s`, found under `target`'s build id `build_id` (if the store names builds),
    /// may be used.
    pub fn check(&self, target: &str, build_id: Option<&str>, s: &Stored) -> Result<(), Rejected> {
        if s.manifest.target != target {
            return Err(Rejected::OtherTarget(s.manifest.target.to_string()));
        }
        let recorded = manifest::build_id(&s.manifest.inputs_digest, s.manifest.started_unix);
        if let Some(found) = build_id.filter(|f| *f != recorded) {
            return Err(Rejected::Misplaced {
                found: found.to_owned(),
                recorded,
            });
        }
        let Some(key) = &self.0 else { return Ok(()) };
        let envelope = s.provenance.as_deref().ok_or(Rejected::NoProvenance)?;
        let statement = provenance::signed_statement(envelope, key)?;
        let digest = sha256_hex(&s.manifest_bytes);
        if statement.sha256_of(manifest::FILE) != Some(digest.as_str()) {
            return Err(Rejected::NotCovered);
        }
        let disagree = provenance::disagreements(&statement, &s.manifest);
        if !disagree.is_empty() {
            return Err(Rejected::Disagree(disagree.join("; ")));
        }
        Ok(())
    }
}

impl Stored {
    /// A build's records as read: the manifest is parsed from exactly `manifest_bytes`, so
    /// what is checked against a digest is what is used. `from` names them in errors.
    pub fn parse(
        manifest_bytes: Vec<u8>,
        from: &Path,
        sha256sums: Option<Vec<u8>>,
        provenance: Option<Vec<u8>>,
    ) -> Result<Stored> {
        let too_big = [
            Some(&manifest_bytes),
            sha256sums.as_ref(),
            provenance.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|b| b.len() as u64 > MAX_RECORD);
        if too_big {
            return Err(Error::BadFile {
                path: from.to_owned(),
                problem: format!("a record larger than {MAX_RECORD} bytes: refused"),
            });
        }
        Ok(Stored {
            manifest: Manifest::from_slice(&manifest_bytes, from)?,
            manifest_bytes,
            sha256sums,
            provenance,
        })
    }
}

impl Records {
    /// The checksum file, the manifest, and the provenance statement over both and every
    /// artifact, signed with `key` (or unsigned without one).
    pub fn of(m: &Manifest, sha256sums: Vec<u8>, key: Option<&SigningKey>) -> Records {
        let manifest = m.to_json();
        let docs = provenance::Documents {
            sha256sums: &sha256sums,
            manifest: &manifest,
        };
        Records {
            provenance: provenance::signed(m, &docs, key),
            sha256sums,
            manifest,
        }
    }
}
