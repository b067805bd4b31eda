//! The default store: `<artifact dir>/<target>/` on the local disk, replaced atomically.
//! Staging happens in a hidden directory beside it (same filesystem), and the swap is one
//! `renameat2(RENAME_EXCHANGE)`, so readers see the old complete set or the new one.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use super::{ArtifactStore, SHA256SUMS};
use crate::artifacts::{ArtifactFile, sha256sums};
use crate::error::{Error, IoContext, Result};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_owned(),
        }
    }

    pub fn target_dir(&self, target: &str) -> PathBuf {
        self.root.join(target)
    }
}

#[async_trait]
impl ArtifactStore for LocalStore {
    fn staging(&self, target: &str) -> Result<tempfile::TempDir> {
        std::fs::create_dir_all(&self.root)
            .ctx(|| format!("cannot create artifact directory `{}`", self.root.display()))?;
        tempfile::Builder::new()
            .prefix(&format!(".staging-{target}-"))
            .tempdir_in(&self.root)
            .ctx(|| {
                format!(
                    "cannot create a staging directory in `{}`",
                    self.root.display()
                )
            })
    }

    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
    ) -> Result<Vec<PathBuf>> {
        if files.iter().any(|f| f.path == Path::new(SHA256SUMS)) {
            return Err(Error::other(format!(
                "target `{target}` produced an artifact named {SHA256SUMS}, which runner writes itself"
            )));
        }
        let sums = staged.path().join(SHA256SUMS);
        std::fs::write(&sums, sha256sums(files))
            .ctx(|| format!("cannot write `{}`", sums.display()))?;

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
        out.push(dest.join(SHA256SUMS));
        Ok(out)
    }
}
