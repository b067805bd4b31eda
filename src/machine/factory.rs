//! The one place that maps a builder to its backend, and the run-scoped state the backends
//! share: one backend per builder for the whole run (so a builder's image is baked and its
//! AMI resolved once, and `max_instances` caps the run), the [`Registry`] of live machines,
//! and each backend's sweeper for `runner gc`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[cfg(feature = "ec2")]
use super::ec2::{Ec2Backend, sweep::Ec2Sweeper};
use super::qemu::image::{Cache, Recipe, RecipeKind};
use super::qemu::{QemuBackend, sweep::QemuSweeper, warm};
use super::settings::Settings;
use super::{Backend, Origin, Registry};
use crate::config::{BackendConfig, Builder, ImageKind, QemuBuilder, Shape};
use crate::error::{Error, IoContext, Result};
use crate::leftovers::Sweeper;
use crate::paths::Dirs;

/// Where a run's machines come from.
pub struct Machines {
    dirs: Dirs,
    settings: Settings,
    registry: Arc<Registry>,
    backends: Mutex<HashMap<PathBuf, Arc<dyn Backend>>>,
    /// Tests hand every builder the same in-process backend.
    #[cfg(test)]
    fake: Option<Arc<dyn Backend>>,
}

/// A cached base image, whatever made it.
pub struct CachedImage {
    pub builder: String,
    pub digest: String,
    pub bytes: u64,
    pub created_unix: u64,
    /// What it is: `bookworm/amd64`.
    pub describe: String,
    /// Warm-start snapshots made from it.
    pub snapshots: Vec<CachedSnapshot>,
}

/// A warm-start snapshot of a cached image.
pub struct CachedSnapshot {
    pub id: String,
    pub bytes: u64,
    /// What machines it restores: `2 vCPU, 1024 MiB, tcg, QEMU 7.2.x`.
    pub describe: String,
}

impl CachedSnapshot {
    fn of(k: &super::qemu::warm::Kept) -> CachedSnapshot {
        CachedSnapshot {
            id: k.id.clone(),
            bytes: k.bytes,
            describe: format!(
                "{} vCPU, {} MiB, {}, QEMU {}",
                k.key.vcpus,
                k.key.memory_mib,
                k.key.accel,
                k.key.qemu.trim_start_matches("QEMU emulator version ")
            ),
        }
    }
}

impl Machines {
    pub fn new(dirs: &Dirs, settings: Settings) -> Machines {
        Machines {
            dirs: dirs.clone(),
            settings,
            registry: Arc::new(Registry::default()),
            backends: Mutex::new(HashMap::new()),
            #[cfg(test)]
            fake: None,
        }
    }

    /// Every builder gets `backend` (unit tests of the run).
    #[cfg(test)]
    pub fn fake(dirs: &Dirs, backend: Arc<dyn Backend>) -> Machines {
        Machines {
            fake: Some(backend),
            ..Machines::new(dirs, Settings::default())
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The builder's backend, made on first use and shared by every target of the run.
    /// Cheap: nothing is baked or resolved until the backend is asked to.
    pub fn backend(&self, builder: &Builder) -> Arc<dyn Backend> {
        #[cfg(test)]
        if let Some(f) = &self.fake {
            return f.clone();
        }
        let mut backends = self.backends.lock().unwrap();
        let backend = backends.entry(builder.path.clone()).or_insert_with(|| {
            let (name, reg) = (&builder.name, self.registry.clone());
            match &builder.backend {
                BackendConfig::Qemu(q) => {
                    Arc::new(QemuBackend::new(name, q, &self.dirs, &self.settings, reg))
                }
                #[cfg(feature = "ec2")]
                BackendConfig::Ec2(e) => Arc::new(Ec2Backend::new(name, e, &self.dirs, reg)),
                #[cfg(not(feature = "ec2"))]
                BackendConfig::Ec2(_) => Arc::new(Missing {
                    builder: name.clone(),
                    feature: "ec2",
                }),
            }
        });
        backend.clone()
    }

    /// Closes every backend the run used (see [`Backend::close`]), after its machines are
    /// gone; every backend is closed even when one fails, and the first failure returned.
    pub async fn close(&self) -> Result<()> {
        let backends: Vec<Arc<dyn Backend>> =
            self.backends.lock().unwrap().values().cloned().collect();
        let mut first = Ok(());
        for b in backends {
            if let Err(e) = b.close().await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Finders of what dead runners left: local machines and bakes, EC2 machines (by record,
    /// and by tag in the regions of `builders`).
    pub fn sweepers(&self, builders: &[Builder]) -> Vec<Box<dyn Sweeper>> {
        #[cfg(not(feature = "ec2"))]
        let _ = builders;
        #[cfg(feature = "ec2")]
        let clouds = builders
            .iter()
            .filter_map(|b| match &b.backend {
                BackendConfig::Ec2(e) => {
                    Some((e.region.clone().unwrap_or_default(), e.endpoint.clone()))
                }
                BackendConfig::Qemu(_) => None,
            })
            .collect();
        vec![
            Box::new(QemuSweeper {
                dirs: self.dirs.clone(),
            }),
            #[cfg(feature = "ec2")]
            Box::new(Ec2Sweeper {
                dirs: self.dirs.clone(),
                clouds,
            }),
        ]
    }

    /// Base images in the cache, by builder then age.
    pub fn cached_images(&self) -> Vec<CachedImage> {
        Cache::new(&self.dirs)
            .list()
            .into_iter()
            .map(|i| CachedImage {
                bytes: i.disk_usage(),
                describe: match i.cloud() {
                    Some(c) => format!("{} {}", c.location(), i.info.recipe.arch.debian()),
                    None => format!("{}/{}", i.info.recipe.record().suite, i.arch.debian()),
                },
                snapshots: warm::kept(&i.dir).iter().map(CachedSnapshot::of).collect(),
                builder: i.info.builder,
                digest: i.digest,
                created_unix: i.info.created_unix,
            })
            .collect()
    }

    /// Removes cached images by builder name or digest prefix (at least 6 characters); or,
    /// when no image matches, the warm-start snapshots whose id starts with `what` (an image
    /// listed with the snapshots it loses).
    pub async fn remove_cached(&self, what: &str) -> Result<Vec<CachedImage>> {
        let cache = Cache::new(&self.dirs);
        let removed = cache.remove(what).await?;
        if !removed.is_empty() {
            return Ok(removed
                .into_iter()
                .map(|i| removed_image(i, vec![]))
                .collect());
        }
        let mut out = vec![];
        for img in cache.list() {
            let gone: Vec<_> = warm::kept(&img.dir)
                .into_iter()
                .filter(|k| what.len() >= 6 && k.id.starts_with(what))
                .collect();
            for k in &gone {
                std::fs::remove_dir_all(&k.dir)
                    .ctx(|| format!("cannot remove `{}`", k.dir.display()))?;
            }
            if !gone.is_empty() {
                out.push(removed_image(
                    img,
                    gone.iter().map(CachedSnapshot::of).collect(),
                ));
            }
        }
        Ok(out)
    }
}

fn removed_image(i: super::qemu::image::Image, snapshots: Vec<CachedSnapshot>) -> CachedImage {
    CachedImage {
        bytes: 0,
        builder: i.info.builder,
        digest: i.digest,
        created_unix: i.info.created_unix,
        describe: String::new(),
        snapshots,
    }
}

/// A builder that makes machines like those a manifest's `origin` records, the reproduce
/// policy of each backend: a recorded recipe is baked again (`shape` sizes the machine); a
/// recorded AMI is launched with the account, region and network of `configured()`, the
/// project's builder file of that name (asked for only then).
pub fn builder_for(
    name: &str,
    origin: &Origin,
    shape: Shape,
    configured: impl FnOnce() -> Result<Builder, crate::config::ConfigError>,
) -> Result<Builder> {
    let backend = match origin {
        Origin::Qemu(record) => {
            let recipe = record
                .recipe()
                .map_err(|(field, why)| Error::NotReproducible {
                    problem: format!("the manifest's {field}: {why}"),
                    source: None,
                })?;
            refuse_special_image(name, &recipe)?;
            BackendConfig::Qemu(qemu_builder(&recipe, shape))
        }
        Origin::Ec2(e) => {
            let own = configured().map_err(|e| Error::NotReproducible {
                problem: format!(
                    "this was built on EC2 builder `{name}`: reproducing it needs that \
                     builder's file (account, region, network) in this project, or --on \
                     another builder"
                ),
                source: Some(Box::new(e.into())),
            })?;
            let BackendConfig::Ec2(b) = own.backend else {
                return Err(Error::NotReproducible {
                    problem: format!(
                        "builder `{name}` of this project is not an EC2 builder: it cannot \
                         launch the recorded AMI"
                    ),
                    source: None,
                });
            };
            BackendConfig::Ec2(crate::config::Ec2Builder {
                ami: crate::config::Ami::Id(e.image.clone()),
                ..b
            })
        }
    };
    Ok(Builder {
        name: name.to_owned(),
        path: PathBuf::from(format!("(manifest builder {name})")),
        backend,
        // A reproduction builds without caches.
        cache: None,
    })
}

/// A recorded local image must be a regular file: a manifest naming `/dev/zero` would hash
/// forever, a FIFO would block.
fn refuse_special_image(name: &str, r: &Recipe) -> Result<()> {
    let Some(path) = r.cloud().and_then(|c| c.path.as_deref()) else {
        return Ok(());
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(Error::BadFile {
            path: path.into(),
            problem: format!(
                "the image builder `{name}` recorded is not a regular file on this host"
            ),
        }),
    }
}

fn qemu_builder(r: &Recipe, shape: Shape) -> QemuBuilder {
    let kind = match &r.kind {
        RecipeKind::Debian { suite, init } => ImageKind::Debian {
            suite: suite.clone(),
            init: *init,
            warm: true,
        },
        // A recorded cloud image: the same file, held to the recorded sha256.
        RecipeKind::Cloud(c) => ImageKind::Cloud(crate::config::CloudImage {
            source: c.source(),
            ssh_user: c.ssh_user.clone(),
            firmware: c.firmware,
            bake_script: c
                .bake_script
                .as_ref()
                .map(|text| crate::config::cloud::BakeScript {
                    path: PathBuf::from("(the manifest's bake_script)"),
                    text: text.clone(),
                }),
        }),
    };
    QemuBuilder {
        kind,
        arch: r.arch,
        packages: r.packages.clone(),
        shape,
        disk: r.disk,
        boot_timeout: crate::config::qemu::default_boot_timeout(r.arch, r.cloud().is_some()),
    }
}

/// The shape a reproduction uses when the manifest records none: a builder file's default.
pub use crate::config::shape::DEFAULT_SHAPE;

/// A backend this build of runner leaves out (`cargo build --no-default-features`): every
/// use is an error that says which feature brings it.
#[cfg(not(feature = "ec2"))]
struct Missing {
    builder: String,
    feature: &'static str,
}

#[cfg(not(feature = "ec2"))]
impl Missing {
    fn error(&self) -> Error {
        Error::FeatureMissing {
            what: format!("builder `{}`", self.builder),
            feature: self.feature,
        }
    }
}

#[cfg(not(feature = "ec2"))]
#[async_trait::async_trait]
impl Backend for Missing {
    async fn origin(&self) -> Result<Origin> {
        Err(self.error())
    }
    async fn prepare(&self, _: &super::Report) -> Result<super::Prepared> {
        Err(self.error())
    }
    async fn launch(
        &self,
        _: &super::MachineSpec,
        _: &crate::guest::GuestKeys,
    ) -> Result<super::Machine> {
        Err(self.error())
    }
    fn capacity(&self) -> usize {
        1
    }

    fn summary(&self) -> String {
        format!("{} (not built with `{}`)", self.builder, self.feature)
    }
}
