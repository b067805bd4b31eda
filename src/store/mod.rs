//! Where a target's artifacts go once the whole target succeeded. The pipeline stages files
//! in a directory the store hands out, then asks the store to publish them; a failed target
//! never publishes, and a store publishes a target's files all at once or not at all.

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

/// The store at `url`, configured by `[store]`, checked before anything starts.
pub async fn remote(
    url: &crate::config::S3Url,
    settings: &crate::config::project::StoreSettings,
    dirs: &crate::paths::Dirs,
) -> Result<Arc<dyn ArtifactStore>> {
    #[cfg(feature = "s3")]
    {
        let settings = s3::Settings {
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            path_style: settings.path_style,
        };
        let store = s3::S3Store::connect(url.clone(), &settings, dirs).await;
        store.preflight().await?;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "s3"))]
    {
        let _ = (settings, dirs);
        Err(crate::error::Error::other(format!(
            "`{url}` needs a runner built with the `s3` feature"
        )))
    }
}

/// Finders of what unfinished publishes left (the S3 upload journal), for `runner gc`.
pub fn sweepers(dirs: &crate::paths::Dirs) -> Vec<Box<dyn crate::leftovers::Sweeper>> {
    #[cfg(feature = "s3")]
    return vec![Box::new(s3::sweep::UploadSweeper { dirs: dirs.clone() })];
    #[cfg(not(feature = "s3"))]
    return {
        let _ = dirs;
        vec![]
    };
}

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactFile;
use crate::error::Result;
use crate::manifest::{self, ArtifactRecord, Manifest};

/// The name of the checksum file published beside every target's artifacts.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// A fresh hidden staging directory under `root` (for the local store: beside the published
/// directories, on the same filesystem, so publishing is a rename).
pub fn staging_in(root: &std::path::Path, target: &str) -> Result<tempfile::TempDir> {
    use crate::error::IoContext;
    std::fs::create_dir_all(root).ctx(|| format!("cannot create `{}`", root.display()))?;
    tempfile::Builder::new()
        .prefix(&format!(".staging-{target}-"))
        .tempdir_in(root)
        .ctx(|| format!("cannot create a staging directory in `{}`", root.display()))
}

/// What a publish is handed besides the files.
#[derive(Clone)]
pub struct Publishing {
    /// Cancelled by Ctrl-C or the target's deadline: the store stops, removes whatever it
    /// already stored, and returns [`Error::Cancelled`](crate::error::Error::Cancelled).
    pub cancel: CancellationToken,
    /// Told the number of bytes just stored, for the target's progress line.
    pub sent: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Publishing {
    pub fn quiet(cancel: CancellationToken) -> Publishing {
        Publishing {
            cancel,
            sent: Arc::new(|_| {}),
        }
    }
}

/// runner writes these two files itself; an artifact by either name would be overwritten or
/// would forge the build's record.
pub fn check_reserved(target: &str, files: &[ArtifactFile]) -> Result<()> {
    use std::path::Path;
    if files
        .iter()
        .any(|f| f.path == Path::new(SHA256SUMS) || f.path == Path::new(manifest::FILE))
    {
        return Err(crate::error::Error::ArtifactRefused(format!(
            "target `{target}` produced an artifact named {SHA256SUMS} or {}, which runner writes itself",
            manifest::FILE
        )));
    }
    Ok(())
}

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// A fresh, empty directory to unpack a target's artifacts into. Removed on drop unless
    /// published.
    fn staging(&self, target: &str) -> Result<tempfile::TempDir>;

    /// Where an artifact of `target`'s build `build_id` will live once published, as a URI
    /// for manifests.
    fn uri(&self, target: &str, build_id: &str, path: &std::path::Path) -> String;

    /// Publishes the staged files of `target`, then the manifest last: a manifest's presence
    /// means its artifacts are complete. Returns where each file now lives, in the order of
    /// `files`, followed by the checksum file and the manifest.
    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
        manifest: &Manifest,
        how: &Publishing,
    ) -> Result<Vec<PathBuf>>;

    /// A complete published build of `target` with these inputs, if the store has one (for a
    /// local store: its artifacts still there with the recorded digests); with locations.
    /// Errors are the store's (unreachable, refused), never a silent "no build".
    async fn published(
        &self,
        target: &str,
        inputs_digest: &str,
    ) -> Result<Option<(Manifest, Vec<PathBuf>)>>;

    /// The newest complete build of `target`, whatever its inputs (for `runner artifacts`).
    async fn latest(&self, target: &str) -> Result<Option<Manifest>>;

    /// Copies one published artifact of a build to `dest`; returns the sha256 of what it wrote.
    async fn fetch(
        &self,
        target: &str,
        build: &Manifest,
        artifact: &ArtifactRecord,
        dest: &std::path::Path,
    ) -> Result<String>;
}
