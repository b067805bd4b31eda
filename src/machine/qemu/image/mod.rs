//! Base images: baked once per recipe, cached by the recipe's digest, shared read-only by
//! every machine through copy-on-write overlays.
//!
//! Layout: `<cache>/images/<digest>/{base.qcow2, vmlinuz, initrd.img, image.json, bake.log}`.
//! A bake happens in a scratch directory and is renamed into place, so a half-baked image is
//! never visible; a lock file serialises concurrent bakes of the same recipe.

pub mod bake;
mod checksum;
pub mod cloud;
pub mod download;
pub mod firmware;
pub mod http;
pub mod mirror;
mod progress;
mod recipe;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::cloud::CloudRecipe;
pub use self::recipe::{ImageRecord, Recipe, RecipeKind};
use crate::config::{Arch, Firmware};
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

/// What a cloud image's customising boot runs (hashed into cloud recipes' digests).
pub const CUSTOMISE: &str = include_str!("guest/customise.sh");
/// A bake's or a customisation's log keeps its head and tail within this: a whole Debian
/// install prints a few MiB, and a failure is read at its end.
pub const LOG_LIMIT: u64 = 16 << 20;

/// The version of the customising steps runner drives from outside the script
/// (`qemu/customise.rs`: waiting for cloud-init, the package managers' commands, the bake
/// script's wrapper) and of the user data the customising boot gets: a change to any of
/// them must bump this, so derived images are made anew.
pub const CUSTOMISE_STEPS: u32 = 1;

/// A baked image in the cache.
#[derive(Debug, Clone)]
pub struct Image {
    /// The recipe digest: the cache key.
    pub digest: String,
    pub arch: Arch,
    pub dir: PathBuf,
    pub qcow2: PathBuf,
    /// `qcow2`'s format: qcow2 in the cache; a cloud image being customised may be raw.
    pub format: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub info: ImageInfo,
    /// How `info.firmware` was chosen, where that is known (the customising boot): a machine
    /// stuck in its firmware says why that firmware.
    pub choice: Option<firmware::Choice>,
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
    /// A cloud image's firmware as booted: the recipe's, or what `firmware = "auto"` read
    /// from the download (see [`firmware`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
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
            format: "qcow2".into(),
            // The uncompressed PVH kernel (amd64) boots faster: no in-guest decompression.
            kernel: Some(dir.join("vmlinux"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| dir.join("vmlinuz")),
            initrd: dir.join("initrd.img"),
            info,
            choice: None,
        })
    }

    /// The cloud image this was customised from; `None` for images runner bakes.
    pub fn cloud(&self) -> Option<&CloudRecipe> {
        self.info.recipe.cloud()
    }

    /// The firmware a cloud image boots with. Images recorded before `auto` carry the
    /// recipe's own (never `auto` then); an unresolved `auto` is the arch's default.
    pub fn firmware(&self) -> Firmware {
        match (self.info.firmware, self.cloud().map(|c| c.firmware)) {
            (Some(f), _) | (None, Some(f @ (Firmware::Bios | Firmware::Uefi))) => f,
            _ => match self.arch {
                Arch::Amd64 => Firmware::Bios,
                Arch::Arm64 => Firmware::Uefi,
            },
        }
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

    /// Returns the recipe's image, made first (for builder `name`) if the cache does not
    /// have it, or `force`: `make(images, digest)` makes it (see `bake::bake`,
    /// `bake::derive`), under a lock per digest.
    pub async fn ensure<F, Fut>(
        &self,
        recipe: &Recipe,
        force: bool,
        make: F,
    ) -> Result<(Image, Provenance)>
    where
        F: FnOnce(PathBuf, String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let digest = recipe.digest();
        if !force && let Some(img) = self.lookup(&digest) {
            return Ok((img, Provenance::Cached));
        }
        std::fs::create_dir_all(&self.root)
            .ctx(|| format!("cannot create image cache `{}`", self.root.display()))?;
        let _lock = lock(&self.root.join(format!("{digest}.lock"))).await?;
        // Someone else may have made it while we waited for the lock.
        if !force && let Some(img) = self.lookup(&digest) {
            return Ok((img, Provenance::Cached));
        }
        make(self.root.clone(), digest.clone()).await?;
        Ok((
            self.lookup(&digest).ok_or_else(|| Error::BadFile {
                path: self.root.join(&digest),
                problem: "the image vanished right after it was made".into(),
            })?,
            Provenance::Baked,
        ))
    }

    /// Where downloaded cloud images are kept (by sha256).
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
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
        self.forget_downloads(&matches);
        Ok(matches)
    }

    /// Removes the downloads of the removed cloud images that no image left in the cache
    /// was made from (with the SHA-512 notes that point at them).
    fn forget_downloads(&self, removed: &[Image]) {
        let left: Vec<String> = self
            .list()
            .iter()
            .filter_map(|i| Some(i.cloud()?.sha256.clone()))
            .collect();
        let downloads = self.downloads();
        for sha in removed.iter().filter_map(|i| i.cloud()).map(|c| &c.sha256) {
            if left.contains(sha) {
                continue;
            }
            let _ = std::fs::remove_file(downloads.join(format!("{sha}.img")));
            for note in std::fs::read_dir(&downloads)
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = note.path();
                let points_here = path.extension().is_some_and(|e| e == "sha256")
                    && std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == sha);
                if points_here {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// An exclusive advisory lock, taken off the async threads because flock blocks.
pub(super) async fn lock(path: &Path) -> Result<nix::fcntl::Flock<File>> {
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
                        .all(|e| crate::host::lock_free(&e.path()))
                })
                .unwrap_or(true)
        })
        .collect()
}
