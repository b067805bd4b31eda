//! The default store: `<artifact dir>/<target>/` on the local disk, replaced atomically.
//! Staging happens in a hidden directory beside it (same filesystem), and the swap is one
//! `renameat2(RENAME_EXCHANGE)`, so readers see the old complete set or the new one.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use super::{ArtifactStore, Publishing, Records, SHA256SUMS, Stored, Trust};
use crate::artifacts::ArtifactFile;
use crate::beneath;
use crate::error::{IoContext, Result};
use crate::manifest::{self, ArtifactRecord, Manifest};

pub struct LocalStore {
    root: PathBuf,
    trust: Trust,
}

impl LocalStore {
    pub fn new(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_owned(),
            trust: Trust::default(),
        }
    }

    /// The store handing out only builds `trust` accepts.
    pub fn trusting(self, trust: Trust) -> LocalStore {
        LocalStore { trust, ..self }
    }

    /// The target's build, if there is one the store's trust accepts; errors are the
    /// records' (unreadable, a link, too large).
    fn accepted(&self, target: &str) -> Result<Option<Stored>> {
        let Some(stored) = read_records(&self.target_dir(target))? else {
            return Ok(None);
        };
        match self.trust.check(target, None, &stored) {
            Ok(()) => Ok(Some(stored)),
            Err(why) => {
                tracing::warn!("ignoring the published build of `{target}`: {why}");
                Ok(None)
            }
        }
    }

    pub fn target_dir(&self, target: &str) -> PathBuf {
        self.root.join(target)
    }
}

#[async_trait]
impl ArtifactStore for LocalStore {
    fn staging(&self, target: &str) -> Result<tempfile::TempDir> {
        super::staging_in(&self.root, target)
    }

    fn uri(&self, target: &str, _build_id: &str, path: &Path) -> String {
        let abs = std::path::absolute(self.target_dir(target).join(path)).unwrap_or_default();
        format!("file://{}", abs.display())
    }

    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
        _manifest: &Manifest,
        records: &Records,
        _how: &Publishing,
    ) -> Result<Vec<PathBuf>> {
        // A rename is too quick to cancel or to report progress on.
        super::check_reserved(target, files)?;
        // The manifest staged last; the directory swap below publishes all at once anyway.
        for (name, bytes) in records.named() {
            let path = staged.path().join(name);
            std::fs::write(&path, bytes).ctx(|| format!("cannot write `{}`", path.display()))?;
        }

        let dest = self.target_dir(target);
        let staged = staged.keep();
        let swapped = if dest.exists() {
            // Exchange: `staged` now holds the previous artifacts, which are then removed.
            renameat2(
                AT_FDCWD,
                &staged,
                AT_FDCWD,
                &dest,
                RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(std::io::Error::from)
        } else {
            std::fs::rename(&staged, &dest)
        };
        if let Err(e) = swapped {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e).ctx(|| format!("cannot move artifacts into `{}`", dest.display()));
        }
        let _ = std::fs::remove_dir_all(&staged);

        let mut out: Vec<PathBuf> = files.iter().map(|f| dest.join(&f.path)).collect();
        out.extend(records.named().map(|(name, _)| dest.join(name)));
        Ok(out)
    }

    async fn published(
        &self,
        target: &str,
        inputs_digest: &str,
    ) -> Result<Option<(Manifest, Vec<PathBuf>)>> {
        let dir = self.target_dir(target);
        // A missing, unreadable or refused build here means no usable build: the local store
        // is rebuilt by the next publish, never trusted half-way.
        let Ok(Some(Stored { manifest: m, .. })) = self.accepted(target) else {
            return Ok(None);
        };
        if m.inputs_digest != inputs_digest {
            return Ok(None);
        }
        let check = m.clone();
        let dir2 = dir.clone();
        let never = tokio_util::sync::CancellationToken::new();
        let intact = tokio::task::spawn_blocking(move || {
            check.artifacts.iter().all(|a| {
                beneath::sha256(&dir2, &a.path, Some(a.size), &never).is_ok_and(|h| h == a.sha256)
            })
        })
        .await
        .unwrap_or(false);
        if !intact {
            return Ok(None);
        }
        let mut paths: Vec<PathBuf> = m.artifacts.iter().map(|a| dir.join(&a.path)).collect();
        paths.push(dir.join(SHA256SUMS));
        if dir.join(crate::provenance::FILE).exists() {
            paths.push(dir.join(crate::provenance::FILE));
        }
        paths.push(dir.join(manifest::FILE));
        Ok(Some((m, paths)))
    }

    async fn latest(&self, target: &str) -> Result<Option<Manifest>> {
        Ok(self.accepted(target)?.map(|s| s.manifest))
    }

    async fn records(&self, target: &str, _build: Option<&str>) -> Result<Option<Stored>> {
        read_records(&self.target_dir(target))
    }

    async fn fetch(
        &self,
        target: &str,
        _build: &Manifest,
        artifact: &ArtifactRecord,
        dest: &Path,
    ) -> Result<String> {
        let dir = self.target_dir(target);
        let (rel, size) = (artifact.path.clone(), artifact.size);
        let dest = dest.to_owned();
        crate::error::joined(
            "copying an artifact",
            tokio::task::spawn_blocking(move || {
                let mut out = std::fs::File::create(&dest)
                    .ctx(|| format!("cannot create `{}`", dest.display()))?;
                let never = tokio_util::sync::CancellationToken::new();
                beneath::sha256_into(&dir, &rel, Some(size), &never, &mut out)
            }),
        )
        .await
    }
}

/// The records in a build's directory (a local store's target directory, or any copy of one),
/// each read capped and refused if it is a link or not a regular file.
pub fn read_records(dir: &Path) -> Result<Option<Stored>> {
    let read = |name: &str| beneath::read(dir, name, beneath::MAX_RECORD);
    let Some(manifest_bytes) = read(manifest::FILE)? else {
        return Ok(None);
    };
    Stored::parse(
        manifest_bytes,
        &dir.join(manifest::FILE),
        read(SHA256SUMS)?,
        read(crate::provenance::FILE)?,
    )
    .map(Some)
}
