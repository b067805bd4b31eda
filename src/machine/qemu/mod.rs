//! Local machines: a copy-on-write overlay on a cached base image, booted by QEMU straight
//! into the image's kernel, with SSH forwarded on a loopback port.
//!
//! Each machine owns one directory under the state dir (overlay, seed, QMP socket, record);
//! its console log is kept beside the machine directories.

pub mod accel;
mod command;
pub mod image;
mod instance;
mod qmp;
mod seed;
pub mod sweep;

use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use self::command::{Accel, Launch};
use self::image::{Cache, Image, Provenance, Recipe};
use self::instance::QemuInstance;
use super::dir::MachineDir;
use super::record::MachineRecord;
use super::settings::Settings;
use super::{Backend, Machine, MachineSpec, Origin, Prepared, Registry, Report};
use crate::config::{QemuBuilder, Shape};
use crate::error::{Error, IoContext, Result};
use crate::guest::{Endpoint, GuestKeys};
use crate::paths::Dirs;

/// Guest memory aside, what one QEMU process costs the host (its own heap, TCG's code
/// cache), for the default parallelism.
const QEMU_OVERHEAD: u64 = 512 << 20;

pub struct QemuBackend {
    name: String,
    builder: QemuBuilder,
    dirs: Dirs,
    settings: Settings,
    registry: Arc<Registry>,
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
            ready: OnceCell::new(),
        }
    }

    /// The image (baked on first use) and the accelerator it boots under.
    async fn ready(&self, report: &Report) -> Result<&(Image, Accel, Provenance)> {
        self.ready
            .get_or_try_init(|| async {
                let opts = image::bake::Options {
                    mirror: self.settings.mirror.clone(),
                    force: self.settings.rebake,
                    report: report.clone(),
                };
                let (img, how) = Cache::new(&self.dirs)
                    .ensure(&self.name, &Recipe::of(&self.builder), &opts)
                    .await?;
                let accel = accel::resolve(self.settings.accel, &img, &self.dirs.state).await;
                tracing::debug!("{}: accelerator {accel:?}", self.name);
                Ok::<_, Error>((img, accel, how))
            })
            .await
    }
}

#[async_trait]
impl Backend for QemuBackend {
    async fn origin(&self) -> Result<Origin> {
        Ok(Origin::Image(Recipe::of(&self.builder)))
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
        let port = free_port()?;
        let dir = MachineDir::create(&self.dirs, |id| {
            MachineRecord::new(id, "qemu", &spec.label, port)
        })?;
        let console = dir.console_log(&self.dirs)?;
        let mut inst = QemuInstance {
            id: dir.id.clone(),
            dir: dir.path.clone(),
            child: None,
            registry: self.registry.clone(),
        };
        // From here on, an error or a dropped future drops `inst`, which removes the machine.
        seed::overlay(&img.qcow2, &dir.path.join("overlay.qcow2")).await?;
        seed::write_seed(&dir.path.join("seed.tar"), keys, &spec.label)?;
        let launch = Launch {
            image: img,
            accel: *accel,
            label: &spec.label,
            shape: spec.shape.unwrap_or(self.builder.shape),
            dir: &dir.path,
            console: &console,
            ssh_port: port,
        };
        let mut cmd = launch.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&dir.path.join("qemu.stderr"))?)
            // Its own process group: a terminal's Ctrl-C reaches runner only, which then
            // tears the machine down in order instead of QEMU vanishing underneath it.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .ctx(|| format!("cannot start `{}`", command::qemu_binary(img.arch)))?;
        inst.child = Some(child);
        inst.register();
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        };
        // sshd runs with -e, so its "Server listening" line reaches the serial console.
        Ok(
            Machine::new(&dir, spec, endpoint, console.clone(), Box::new(inst))
                .with_ready_hint(console, "Server listening"),
        )
    }

    fn capacity(&self) -> usize {
        capacity(self.builder.shape)
    }
}

/// One machine per core, but no more than available memory holds (guest memory plus QEMU's
/// own), and at least one.
pub fn capacity(shape: Shape) -> usize {
    let by_memory = crate::host::memory_available() / (shape.memory.0 + QEMU_OVERHEAD);
    crate::host::cpus().min(by_memory as usize).max(1)
}

fn open_log(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::File::create(path).ctx(|| format!("cannot create `{}`", path.display()))
}

/// A loopback port nobody listens on now. QEMU binds it a moment later; the ports this
/// process handed out are remembered so parallel launches never collide with each other.
fn free_port() -> Result<u16> {
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
