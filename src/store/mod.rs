//! Where a target's artifacts go once the whole target succeeded. The pipeline stages files
//! in a directory the store hands out, then asks the store to publish them; a failed target
//! never publishes, and a store publishes a target's files all at once or not at all.

pub mod caches;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
mod staging;
mod trust;

pub use caches::BucketCaches;
pub use staging::{StagingSweeper, staging_in};
pub use trust::{Rejected, Trust};

/// The store at `url`, configured by `[store]`, checked before anything starts; it hands out
/// only builds `trust` accepts.
pub async fn remote(
    url: &crate::config::S3Url,
    settings: &crate::config::project::StoreSettings,
    dirs: &crate::paths::Dirs,
    trust: Trust,
) -> Result<Arc<dyn ArtifactStore>> {
    #[cfg(feature = "s3")]
    {
        let settings = s3::Settings {
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            path_style: settings.path_style,
        };
        let store = s3::S3Store::connect(url.clone(), &settings, dirs)
            .await
            .trusting(trust);
        store.preflight().await?;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "s3"))]
    {
        let _ = (settings, dirs, trust);
        Err(crate::error::Error::FeatureMissing {
            what: format!("`{url}`"),
            feature: "s3",
        })
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

pub use crate::manifest::SHA256SUMS;

/// The documents published beside a build's artifacts, in the order they are written: the
/// manifest last, since its presence says the build is complete.
pub struct Records {
    pub sha256sums: Vec<u8>,
    /// The DSSE envelope of the build's signed (or unsigned) provenance.
    pub provenance: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Records {
    pub fn named(&self) -> [(&'static str, &[u8]); 3] {
        [
            (SHA256SUMS, &self.sha256sums),
            (crate::provenance::FILE, &self.provenance),
            (manifest::FILE, &self.manifest),
        ]
    }
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
    let reserved = [SHA256SUMS, manifest::FILE, crate::provenance::FILE];
    if let Some(f) = files
        .iter()
        .find(|f| reserved.iter().any(|r| f.path == Path::new(r)))
    {
        return Err(crate::error::Error::ArtifactRefused(format!(
            "target `{target}` produced an artifact named {}, which runner writes itself",
            f.path.display()
        )));
    }
    Ok(())
}

/// A file put in a store for machines to fetch: its key and a URL that needs no credentials.
#[derive(Debug, Clone)]
pub struct Shared {
    pub key: String,
    pub url: String,
}

/// A published build's records as the store holds them; made by [`Stored::parse`], so the
/// manifest is always the one its bytes say.
pub struct Stored {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub sha256sums: Option<Vec<u8>>,
    pub provenance: Option<Vec<u8>>,
}

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// A fresh, empty directory to unpack a target's artifacts into. Removed on drop unless
    /// published.
    fn staging(&self, target: &str) -> Result<tempfile::TempDir>;

    /// Where an artifact of `target`'s build `build_id` will live once published, as a URI
    /// for manifests.
    fn uri(&self, target: &str, build_id: &str, path: &std::path::Path) -> String;

    /// Publishes the staged files of `target`, then `records` (the manifest last: a
    /// manifest's presence means its artifacts are complete). Returns where each file now
    /// lives, in the order of `files`, followed by the records.
    async fn publish(
        &self,
        target: &str,
        staged: tempfile::TempDir,
        files: &[ArtifactFile],
        manifest: &Manifest,
        records: &Records,
        how: &Publishing,
    ) -> Result<Vec<PathBuf>>;

    /// The published records of `target`'s newest complete build (or of build `build`), as
    /// stored, for `runner verify`, whatever the store's trust (verify checks them itself).
    async fn records(&self, target: &str, build: Option<&str>) -> Result<Option<Stored>>;

    /// A complete published build of `target` with these inputs that the store's trust
    /// accepts, if the store has one (for a local store: its artifacts still there with the
    /// recorded digests); with locations.
    /// Errors are the store's (unreachable, refused), never a silent "no build".
    async fn published(
        &self,
        target: &str,
        inputs_digest: &str,
    ) -> Result<Option<(Manifest, Vec<PathBuf>)>>;

    /// The newest complete build of `target` that the store's trust accepts, whatever its
    /// inputs (for `runner artifacts` and `runner why`).
    async fn latest(&self, target: &str) -> Result<Option<Manifest>>;

    /// Puts `file` in the store as `name` (content-addressed by the caller, so one already
    /// there is not sent again) and returns a URL machines can fetch it by; `None` for a store
    /// that cannot hand out URLs (the local one).
    async fn share(&self, _name: &str, _file: &std::path::Path) -> Result<Option<Shared>> {
        Ok(None)
    }

    /// Removes what [`ArtifactStore::share`] put.
    async fn unshare(&self, _shared: &Shared) -> Result<()> {
        Ok(())
    }

    /// Where this store keeps build caches for machines that take no cache disk; `None` for
    /// a store that cannot hand out URLs (the local one).
    fn caches(&self) -> Option<&dyn BucketCaches> {
        None
    }

    /// Copies one published artifact of a build to `dest`; returns the sha256 of what it wrote.
    async fn fetch(
        &self,
        target: &str,
        build: &Manifest,
        artifact: &ArtifactRecord,
        dest: &std::path::Path,
    ) -> Result<String>;
}
