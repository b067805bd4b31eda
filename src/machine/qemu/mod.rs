//! Local machines: a copy-on-write overlay on a cached base image, booted by QEMU straight
//! into the image's kernel, with SSH forwarded on a loopback port.
//!
//! Each machine owns one directory under the state dir (overlay, seed, QMP socket, record);
//! its console log is kept beside the machine directories.

pub mod accel;
mod cold;
mod command;
mod customise;
pub mod image;
mod instance;
mod launch;
mod packages;
mod qmp;
mod seed;
pub mod sweep;
pub mod warm;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use self::cold::ColdBoot;
use self::command::Accel;
use self::image::{Cache, CloudRecipe, Image, Provenance, Recipe, RecipeKind};
use self::launch::Start;
use self::warm::{Key, Snapshot};
use super::settings::Settings;
use super::{Backend, Machine, MachineSpec, Origin, Prepared, Registry, Report};
use crate::config::{ImageKind, QemuBuilder, Shape};
use crate::error::{Error, IoContext, Result};
use crate::guest::GuestKeys;
use crate::paths::Dirs;

/// Guest memory aside, what one QEMU process costs the host (its own heap, TCG's code
/// cache), for the default parallelism.
const QEMU_OVERHEAD: u64 = 512 << 20;

/// How long the boot of a snapshot's template may take (a cold boot under TCG, on a busy
/// host) before runner gives up on warm starts for this machine.
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(180);

pub struct QemuBackend {
    name: String,
    builder: QemuBuilder,
    dirs: Dirs,
    settings: Settings,
    registry: Arc<Registry>,
    recipe: OnceCell<Recipe>,
    ready: OnceCell<(Image, Accel, Provenance)>,
}

impl QemuBackend {
    pub fn new(
        name: &str,
        builder: &QemuBuilder,
        dirs: &Dirs,
        settings: &Settings,
        registry: Arc<Registry>,
    ) -> QemuBackend {
        QemuBackend {
            name: name.to_owned(),
            builder: builder.clone(),
            dirs: dirs.clone(),
            settings: settings.clone(),
            registry,
            recipe: OnceCell::new(),
            ready: OnceCell::new(),
        }
    }

    /// The warm-start snapshot for machines like `spec`, made now if there is none (one
    /// process at a time per snapshot; the others wait and use it). `Err` says why the
    /// machine boots cold instead.
    async fn snapshot(
        &self,
        start: &Start<'_>,
        spec: &MachineSpec,
    ) -> std::result::Result<Snapshot, ColdBoot> {
        if self.settings.cold {
            return Err(ColdBoot::Asked);
        }
        match &self.builder.kind {
            ImageKind::Cloud(_) => return Err(ColdBoot::CloudImage),
            ImageKind::Debian { warm: false, .. } => return Err(ColdBoot::WarmOff),
            // Lean and systemd alike: the snapshot point is in runner's initrd, before
            // switch_root, so a systemd machine's init starts only after its identity arrived.
            ImageKind::Debian { .. } => {}
        }
        if spec.disks.len() > 1 {
            return Err(ColdBoot::ExtraDisks);
        }
        let qemu = command::qemu_version(start.image.arch).await;
        let key = Key::new(start.image, start.accel, start.shape, &qemu);
        let snap = Snapshot::at(&start.image.dir, &key);
        if snap.usable(&key) {
            return Ok(snap);
        }
        let made = async {
            // Waits out another process's template boot and save, at most.
            let lock = snap
                .lock(TEMPLATE_TIMEOUT + Duration::from_secs(120))
                .await?;
            if !snap.usable(&key) {
                tracing::info!(
                    "{}: making a warm-start snapshot ({})",
                    spec.label,
                    snap.id()
                );
                start
                    .template(&spec.label, &snap, &key, TEMPLATE_TIMEOUT)
                    .await?;
            }
            drop(lock);
            Ok::<_, Error>(())
        };
        match made.await {
            Ok(()) => Ok(snap),
            Err(e) => Err(ColdBoot::NoSnapshot(e)),
        }
    }

    /// What the image is made from; a cloud image's sha256 is read from its checksum file
    /// (once per run).
    async fn recipe(&self) -> Result<&Recipe> {
        self.recipe
            .get_or_try_init(|| async {
                let sha256 = match self.builder.cloud() {
                    Some(c) => {
                        let downloads = Cache::new(&self.dirs).downloads();
                        let sha = image::download::expected_sha256(
                            &self.name,
                            &c.source,
                            &downloads,
                            &Report::Lines,
                        );
                        sha.await?
                    }
                    None => String::new(),
                };
                Ok::<_, Error>(Recipe::of(&self.builder, |_| sha256))
            })
            .await
    }

    /// The image (made on first use) and the accelerator it boots under.
    async fn ready(&self, report: &Report) -> Result<&(Image, Accel, Provenance)> {
        self.ready
            .get_or_try_init(|| async {
                let recipe = self.recipe().await?;
                let (img, how) = match &recipe.kind {
                    RecipeKind::Debian { suite, init } => {
                        let debian = image::bake::Debian { suite, init: *init };
                        self.bake(recipe, debian, report).await?
                    }
                    RecipeKind::Cloud(cloud) => self.derive(recipe, cloud, report).await?,
                };
                let accel = accel::resolve(self.settings.accel, &img, &self.dirs.state).await;
                tracing::debug!("{}: accelerator {accel:?}", self.name);
                Ok::<_, Error>((img, accel, how))
            })
            .await
    }

    /// runner's own image, baked from Debian packages.
    async fn bake(
        &self,
        recipe: &Recipe,
        debian: image::bake::Debian<'_>,
        report: &Report,
    ) -> Result<(Image, Provenance)> {
        let opts = image::bake::Options {
            mirror: self.settings.mirror.clone(),
            force: self.settings.rebake,
            report: report.clone(),
        };
        Cache::new(&self.dirs)
            .ensure(recipe, opts.force, |images, digest| async move {
                image::bake::bake(&images, &self.name, recipe, debian, &digest, &opts).await
            })
            .await
    }

    /// A cloud image, downloaded (verified before anything boots it) and customised.
    async fn derive(
        &self,
        recipe: &Recipe,
        cloud: &CloudRecipe,
        report: &Report,
    ) -> Result<(Image, Provenance)> {
        let cache = Cache::new(&self.dirs);
        // The builder's own source says how far its checksum is trusted; the recorded one
        // (pinned to its sha256) serves when there is none.
        let source = match self.builder.cloud() {
            Some(c) => c.source.clone(),
            None => cloud.source(),
        };
        let source = &source;
        let job = customise::Job {
            dirs: &self.dirs,
            registry: &self.registry,
            accel: accel::unprobed(self.settings.accel, recipe.arch, &self.dirs.state).await,
            name: &self.name,
            builder: &self.builder,
            cloud,
            report,
        };
        let downloads = cache.downloads();
        cache
            .ensure(recipe, self.settings.rebake, |images, digest| async move {
                let file =
                    image::download::fetch(&downloads, &self.name, source, &cloud.sha256, report)
                        .await?;
                image::bake::derive(
                    &images,
                    &self.name,
                    recipe,
                    &digest,
                    |out, log| async move {
                        customise::customise(&job, recipe, &file, &out, &log).await
                    },
                )
                .await
            })
            .await
    }
}

#[async_trait]
impl Backend for QemuBackend {
    async fn origin(&self) -> Result<Origin> {
        Ok(Origin::Qemu(self.recipe().await?.record()))
    }

    async fn prepare(&self, report: &Report) -> Result<Prepared> {
        let (img, _, how) = self.ready(report).await?;
        Ok(Prepared {
            base_image: img.info.base_sha256.clone(),
            fresh: *how == Provenance::Baked,
            location: img.dir.display().to_string(),
        })
    }

    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine> {
        let (img, accel, _) = self.ready(&Report::Lines).await?;
        let start = Start {
            dirs: &self.dirs,
            registry: &self.registry,
            image: img,
            accel: *accel,
            shape: spec.shape.unwrap_or(self.builder.shape),
        };
        let why_cold = match self.snapshot(&start, spec).await {
            Ok(snap) => match start.warm(spec, keys, &snap).await {
                Ok(m) => {
                    tracing::info!("{}: {}", spec.label, m.start);
                    return Ok(m);
                }
                Err(e) => ColdBoot::WarmFailed(e),
            },
            Err(why) => why,
        };
        tracing::info!("{}: {why_cold}", spec.label);
        start.cold(spec, keys, why_cold.to_string()).await
    }

    fn capacity(&self) -> usize {
        capacity(self.builder.shape)
    }

    fn summary(&self) -> String {
        let b = &self.builder;
        let image = match &b.kind {
            ImageKind::Debian { suite, init, .. } => format!("debian {suite} ({})", init.as_str()),
            ImageKind::Cloud(c) => match &c.source {
                crate::config::ImageSource::Url { url, .. } => format!("cloud image {url}"),
                crate::config::ImageSource::Path { path, .. } => {
                    format!("cloud image {}", path.display())
                }
            },
        };
        format!(
            "qemu {} {image}, {} vCPU {}",
            b.arch.debian(),
            b.shape.vcpus,
            b.shape.memory
        )
    }

    fn attaches_disks(&self) -> bool {
        true
    }
}

/// One machine per core, but no more than available memory holds (guest memory plus QEMU's
/// own), and at least one.
pub fn capacity(shape: Shape) -> usize {
    let by_memory = crate::host::memory_available() / (shape.memory.0 + QEMU_OVERHEAD);
    crate::host::cpus().min(by_memory as usize).max(1)
}

/// A loopback port nobody listens on now. QEMU binds it a moment later; the ports this
/// process handed out are remembered so parallel launches never collide with each other.
pub(super) fn free_port() -> Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    // Process-wide on purpose: two runs in one process share the host's port space.
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..64 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "cannot bind a loopback port")?;
        let port = l.local_addr().ctx(|| "cannot read a bound port")?.port();
        if GIVEN
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(Error::other("no free loopback port"))
}
