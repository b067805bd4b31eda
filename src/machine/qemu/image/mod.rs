//! Base images: baked once per recipe, cached by the recipe's digest, shared read-only by
//! every machine through copy-on-write overlays.
//!
//! Layout: `<cache>/images/<digest>/{base.qcow2, vmlinuz, initrd.img, image.json, bake.log}`.
//! A bake happens in a scratch directory and is renamed into place, so a half-baked image is
//! never visible; a lock file serialises concurrent bakes of the same recipe.

pub mod bake;
pub mod mirror;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Arch, Init, QemuBuilder, Size};
use crate::error::{Error, IoContext, Result};
use crate::paths::Dirs;

/// The guest side of runner, embedded so an installed binary needs no checkout, and hashed
/// into every recipe digest so changing them rebakes.
pub const GUEST_FILES: &[(&str, &str)] = &[
    ("bake.sh", include_str!("guest/bake.sh")),
    ("kernel.sh", include_str!("guest/kernel.sh")),
    ("initrd.sh", include_str!("guest/initrd.sh")),
    ("init-lean.sh", include_str!("guest/init-lean.sh")),
    ("init-systemd.sh", include_str!("guest/init-systemd.sh")),
    ("initrd-init", include_str!("guest/initrd-init")),
    ("reseed.c", include_str!("guest/reseed.c")),
    ("runner-init", include_str!("guest/runner-init")),
];

/// Everything that determines an image's content, and nothing else (not vCPUs or memory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipe {
    pub distro: String,
    pub suite: String,
    pub arch: Arch,
    pub packages: Vec<String>,
    pub disk: Size,
    /// Absent in records of lean images, so recipes from before init kinds read the same.
    #[serde(default, skip_serializing_if = "Init::is_lean")]
    pub init: Init,
}

impl Recipe {
    pub fn of(q: &QemuBuilder) -> Recipe {
        Recipe {
            distro: "debian".into(),
            suite: q.suite.clone(),
            arch: q.arch,
            packages: q.packages.clone(),
            disk: q.disk,
            init: q.init,
        }
    }

    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"runner-image-v1\0");
        h.update(serde_json::to_vec(self).expect("recipe serializes"));
        for (name, text) in GUEST_FILES {
            for part in [name, text] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// A baked image in the cache.
#[derive(Debug, Clone)]
pub struct Image {
    /// The recipe digest: the cache key.
    pub digest: String,
    pub arch: Arch,
    pub dir: PathBuf,
    pub qcow2: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub info: ImageInfo,
}

/// `image.json`: what `runner image list` shows and what a manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub builder: String,
    pub recipe: Recipe,
    /// sha256 of base.qcow2: the base image digest recorded in build manifests.
    pub base_sha256: String,
    pub created_unix: u64,
    pub bake_seconds: f64,
}

impl Image {
    fn open(dir: &Path) -> Result<Image> {
        let path = dir.join("image.json");
        let bytes = std::fs::read(&path).ctx(|| format!("cannot read `{}`", path.display()))?;
        let info: ImageInfo = serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path: path.clone(),
            problem: format!("corrupt image record: {e}"),
        })?;
        Ok(Image {
            digest: dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            arch: info.recipe.arch,
            dir: dir.to_owned(),
            qcow2: dir.join("base.qcow2"),
            // The uncompressed PVH kernel (amd64) boots faster: no in-guest decompression.
            kernel: Some(dir.join("vmlinux"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| dir.join("vmlinuz")),
            initrd: dir.join("initrd.img"),
            info,
        })
    }

    /// Bytes on disk (qcow2 is sparse-aware: this is what the cache really costs).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    }
}

pub struct Cache {
    root: PathBuf,
}

/// How `ensure` got its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    Cached,
    Baked,
}

impl Cache {
    pub fn new(dirs: &Dirs) -> Cache {
        Cache {
            root: dirs.images(),
        }
    }

    pub fn lookup(&self, digest: &str) -> Option<Image> {
        Image::open(&self.root.join(digest)).ok()
    }

    /// Returns the recipe's image, baking it first (for builder `name`) if the cache does
    /// not have it.
    pub async fn ensure(
        &self,
        name: &str,
        recipe: &Recipe,
        opts: &bake::Options,
    ) -> Result<(Image, Provenance)> {
        let digest = recipe.digest();
        if !opts.force
            && let Some(img) = self.lookup(&digest)
        {
            return Ok((img, Provenance::Cached));
        }
        std::fs::create_dir_all(&self.root)
            .ctx(|| format!("cannot create image cache `{}`", self.root.display()))?;
        let _lock = lock(&self.root.join(format!("{digest}.lock"))).await?;
        // Someone else may have baked it while we waited for the lock.
        if !opts.force
            && let Some(img) = self.lookup(&digest)
        {
            return Ok((img, Provenance::Cached));
        }
        bake::bake(&self.root, name, recipe, &digest, opts).await?;
        Ok((
            self.lookup(&digest).ok_or_else(|| Error::BadFile {
                path: self.root.join(&digest),
                problem: "the image vanished right after its bake".into(),
            })?,
            Provenance::Baked,
        ))
    }

    pub fn list(&self) -> Vec<Image> {
        let mut images: Vec<Image> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(|e| Image::open(&e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        images.sort_by(|a, b| {
            (&a.info.builder, a.info.created_unix).cmp(&(&b.info.builder, b.info.created_unix))
        });
        images
    }

    /// Removes images whose builder name equals `what` or whose digest starts with it.
    pub async fn remove(&self, what: &str) -> Result<Vec<Image>> {
        let matches: Vec<Image> = self
            .list()
            .into_iter()
            .filter(|i| i.info.builder == what || (what.len() >= 6 && i.digest.starts_with(what)))
            .collect();
        for img in &matches {
            let _lock = lock(&self.root.join(format!("{}.lock", img.digest))).await?;
            std::fs::remove_dir_all(&img.dir)
                .ctx(|| format!("cannot remove `{}`", img.dir.display()))?;
            let _ = std::fs::remove_file(self.root.join(format!("{}.lock", img.digest)));
        }
        Ok(matches)
    }
}

/// An exclusive advisory lock, taken off the async threads because flock blocks.
async fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = path.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let f = File::create(&path).ctx(|| format!("cannot open lock `{}`", path.display()))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
            .ctx(|| format!("cannot lock `{}`", path.display()))
    });
    crate::error::joined("an image lock", task).await
}

/// Scratch directories of bakes whose lock nobody holds any more: what a killed bake left.
pub fn stale_bakes(images: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(images) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some(rest) = name.strip_prefix(".bake-") else {
                return false;
            };
            let short = rest.split('-').next().unwrap_or_default().to_owned();
            // Any lock whose digest starts with this prefix and can be taken means no bake runs.
            std::fs::read_dir(images)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| {
                            e.file_name().to_string_lossy().starts_with(&short)
                                && e.file_name().to_string_lossy().ends_with(".lock")
                        })
                        .all(|e| lock_free(&e.path()))
                })
                .unwrap_or(true)
        })
        .collect()
}

fn lock_free(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return true;
    };
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}
