//! Where a target's artifacts go once the whole target succeeded. The pipeline stages files
//! in a directory the store hands out, then asks the store to publish them; a failed target
//! never publishes, and a store publishes a target's files all at once or not at all.

pub mod local;

use std::path::PathBuf;

use async_trait::async_trait;

use crate::artifacts::ArtifactFile;
use crate::error::Result;

/// The name of the checksum file published beside every target's artifacts.
pub const SHA256SUMS: &str = "SHA256SUMS";

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// A fresh, empty directory to unpack a target's artifacts into. Removed on drop unless
    /// published.
    fn staging(&self, target: &str) -> Result<tempfile::TempDir>;

    /// Publishes the staged files of `target`; returns where each now lives (paths or URIs),
    /// in the order of `files`, followed by the checksum file.
    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
    ) -> Result<Vec<PathBuf>>;
}
