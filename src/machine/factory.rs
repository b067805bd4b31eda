//! The one place that maps a builder to its backend, and the run-scoped state the backends
//! share: one backend per builder for the whole run (so a builder's image is baked and its
//! AMI resolved once, and `max_instances` caps the run), the [`Registry`] of live machines,
//! and each backend's sweeper for `runner gc`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "ec2")]
use super::ec2::{Ec2Backend, sweep::Ec2Sweeper};
use super::qemu::image::{Cache, Recipe};
use super::qemu::{QemuBackend, sweep::QemuSweeper};
use super::settings::Settings;
use super::{Backend, Origin, Registry};
use crate::config::{BackendConfig, Builder, QemuBuilder, Shape, Size};
use crate::error::{Error, Result};
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
                builder: i.info.builder,
                digest: i.digest,
                created_unix: i.info.created_unix,
                describe: format!("{}/{}", i.info.recipe.suite, i.info.recipe.arch.debian()),
            })
            .collect()
    }

    /// Removes cached images by builder name or digest prefix (at least 6 characters).
    pub async fn remove_cached(&self, what: &str) -> Result<Vec<CachedImage>> {
        let removed = Cache::new(&self.dirs).remove(what).await?;
        Ok(removed
            .into_iter()
            .map(|i| CachedImage {
                bytes: 0,
                builder: i.info.builder,
                digest: i.digest,
                created_unix: i.info.created_unix,
                describe: String::new(),
            })
            .collect())
    }
}

/// A builder that makes machines like those a manifest's `origin` records: what the image
/// contains comes from the origin; `shape` sizes the machine.
pub fn builder_for(name: &str, origin: &Origin, shape: Shape) -> Result<Builder> {
    let Origin::Image(r) = origin else {
        return Err(Error::other(format!(
            "`{name}` was built on EC2; reproducing EC2 builds is not supported yet"
        )));
    };
    Ok(Builder {
        name: name.to_owned(),
        path: PathBuf::from(format!("(manifest builder {name})")),
        backend: BackendConfig::Qemu(qemu_builder(r, shape)),
    })
}

fn qemu_builder(r: &Recipe, shape: Shape) -> QemuBuilder {
    QemuBuilder {
        suite: r.suite.clone(),
        arch: r.arch,
        packages: r.packages.clone(),
        init: r.init,
        shape,
        disk: r.disk,
        boot_timeout: Duration::from_secs(if r.arch.is_native() { 120 } else { 300 }),
    }
}

/// The shape a reproduction uses when the manifest records none.
pub const DEFAULT_SHAPE: Shape = Shape {
    vcpus: 2,
    memory: Size(1 << 30),
};

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
        Error::other(format!(
            "builder `{}` needs a runner built with the `{}` feature",
            self.builder, self.feature
        ))
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
}
