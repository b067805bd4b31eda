//! From a builder name to a reachable machine: ensure the image, choose the backend, launch,
//! wait for SSH. Used by `runner vm` now and by the build pipeline.

use std::path::PathBuf;

use crate::config::{Backend as Backend_, Builder};
use crate::error::{Error, Result};
use crate::image::{Cache, bake};
use crate::keys::GuestKeys;
use crate::machine::accel::{self, AccelChoice};
use crate::machine::ec2::{self, Ec2Backend};
use crate::machine::qemu::QemuBackend;
use crate::machine::{Backend, Machine, MachineSpec};
use crate::manifest::Origin;
use crate::paths::Dirs;
use crate::signals::Shutdown;
use crate::ssh::{self, Session};

/// Host-wide settings every launch needs.
#[derive(Clone)]
pub struct Env {
    pub project: PathBuf,
    pub dirs: Dirs,
    pub accel: AccelChoice,
    pub bake: bake::Options,
    pub shutdown: Shutdown,
}

/// A machine, its session and its keys, from launch until teardown.
pub struct Lease {
    pub machine: Machine,
    pub session: Session,
    pub keys: GuestKeys,
}

/// Runs `fut` unless the shutdown token fires first.
pub async fn cancellable<T>(sd: &Shutdown, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = fut => r,
        _ = sd.token.cancelled() => Err(Error::Cancelled),
    }
}

/// The backend for a builder (its image baked if needed, or its AMI resolved), and the
/// identity of that base image for manifests: a sha256 for baked images, an AMI id on EC2.
pub async fn backend(env: &Env, builder: &Builder) -> Result<(Box<dyn Backend>, String)> {
    if let Backend_::Ec2(e) = &builder.backend {
        let backend = cancellable(
            &env.shutdown,
            Ec2Backend::connect(&builder.name, e, &env.dirs),
        )
        .await?;
        let ami = backend.ami.clone();
        return Ok((Box::new(backend), ami));
    }
    let (image, _) = cancellable(
        &env.shutdown,
        Cache::new(&env.dirs).ensure(builder, &env.bake),
    )
    .await?;
    let accel = accel::resolve(env.accel, &image, &env.dirs.state).await;
    tracing::debug!("{}: accelerator {accel:?}", builder.name);
    let base = image.info.base_sha256.clone();
    let backend = QemuBackend {
        image,
        accel,
        dirs: env.dirs.clone(),
    };
    Ok((Box::new(backend), base))
}

/// What a build's machine comes from, for its inputs digest and manifest. For EC2 this
/// resolves the AMI (once per builder and process), so a newer AMI is a different input.
pub async fn origin(env: &Env, builder: &Builder) -> Result<Origin> {
    let image = match &builder.backend {
        Backend_::Ec2(e) => Some(
            cancellable(&env.shutdown, ec2::resolve(&builder.name, e))
                .await?
                .ami,
        ),
        Backend_::Qemu(_) => None,
    };
    Ok(Origin::of(builder, image.as_deref()))
}

pub fn spec(builder: &Builder, label: &str) -> MachineSpec {
    // An EC2 machine's size comes with its instance type; these only matter to QEMU.
    let (vcpus, memory_mib) = builder.qemu().map_or((0, 0), |q| (q.vcpus, q.memory.mib()));
    MachineSpec {
        label: label.to_owned(),
        vcpus,
        memory_mib,
        boot_timeout: builder.boot_timeout(),
    }
}

/// Launches and waits for SSH. On any failure or cancellation the machine is already torn
/// down when this returns.
pub async fn lease(env: &Env, backend: &dyn Backend, spec: &MachineSpec) -> Result<Lease> {
    let keys = GuestKeys::generate()?;
    let mut machine = backend.launch(spec, &keys).await?;
    match cancellable(&env.shutdown, ssh::wait_ready(&mut machine, &keys)).await {
        Ok(session) => Ok(Lease {
            machine,
            session,
            keys,
        }),
        Err(e) => {
            // Even when cancelled: the first signal means an orderly teardown (QMP quit, then
            // kill); a second signal never gets here, it kills everything and exits.
            machine.teardown(false).await?;
            Err(e)
        }
    }
}

impl Lease {
    /// Closes the session and tears the machine down; a forced teardown skips politeness.
    pub async fn release(mut self, force: bool) -> Result<()> {
        if !force {
            self.session.close().await;
        }
        self.machine.teardown(force).await
    }
}
