//! Where machines come from. Everything outside this module sees only [`Backend`], [`Machine`]
//! and [`Lease`], and gets backends from the [`Machines`] factory: it launches, reaches the
//! machine through the guest contract, and tears it down, without knowing whether a
//! hypervisor or a cloud is behind it. Each backend also owns finding what a dead runner left
//! of its machines (see [`crate::leftovers`]).

pub mod boot;
pub mod cloud_init;
pub mod console;
pub mod dir;
#[cfg(feature = "ec2")]
pub mod ec2;
mod factory;
#[cfg(test)]
pub mod fake;
mod lease;
mod lost;
mod origin;
pub mod qemu;
pub mod record;
mod registry;
mod settings;
mod waits;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::events::ImageStep;
use crate::guest::ssh::{self, Booting, Probe};
use crate::guest::{Endpoint, Guest, GuestKeys};

pub use factory::{CachedImage, DEFAULT_SHAPE, Machines, builder_for};
pub use lease::{Lease, lease};
pub use lost::Lost;
pub use origin::{Ec2Origin, Origin};
pub use registry::Registry;
pub use settings::{AccelChoice, Settings};
pub use waits::{Tell, Waits};

/// What the pipeline asks of a machine, whatever the backend.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// A human label: the builder or target name; shows in logs and `runner gc`.
    pub label: String,
    /// vCPUs and memory, where the backend takes them from runner (QEMU).
    pub shape: Option<Shape>,
    pub boot_timeout: Duration,
    /// Read-only disks to attach (the context pack's image), where the backend can.
    pub disks: Vec<Disk>,
    /// A build cache's generation, attached (where the backend attaches disks) through a
    /// writable copy-on-write layer of the machine's own: see [`Machine::cache_layer`].
    pub cache: Option<PathBuf>,
    /// A URL the machine fetches its context from as it boots (remote machines).
    pub context_url: Option<String>,
    /// Its console log keeps at most this many bytes (head and tail), where runner reads
    /// the console as it goes (QEMU).
    pub console_limit: u64,
    /// Where a launch that has to wait (a cloud's quota or capacity) says why.
    pub waits: Waits,
    /// How many machines of this target were taken away before this one (a backend may
    /// launch differently after a reclaim: on-demand instead of spot).
    pub reclaimed: u32,
}

/// A read-only disk image, seen in the guest with this serial.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
}

impl MachineSpec {
    /// A machine as `builder` describes it, labelled `label`.
    pub fn of(builder: &crate::config::Builder, label: &str) -> MachineSpec {
        MachineSpec {
            label: label.to_owned(),
            shape: builder.shape(),
            boot_timeout: builder.boot_timeout(),
            disks: vec![],
            cache: None,
            context_url: None,
            console_limit: crate::config::project::DEFAULT_CONSOLE.0,
            waits: Waits::default(),
            reclaimed: 0,
        }
    }
}

/// How preparing a backend (baking an image) reports its steps: to a spinner of its own
/// (`runner image build` on a terminal), to plain lines on stderr, or to a caller that shows
/// them its own way (a build's progress line).
#[derive(Clone, Default)]
pub enum Report {
    Spinner,
    #[default]
    Lines,
    /// Each line, and the step it begins (if it begins one).
    To(Arc<dyn Fn(Option<ImageStep>, String) + Send + Sync>),
}

impl Report {
    /// A line about the step under way.
    pub fn line(&self, text: String) {
        self.show(None, text)
    }

    /// A line that begins `step`.
    pub fn step(&self, step: ImageStep, text: String) {
        self.show(Some(step), text)
    }

    fn show(&self, step: Option<ImageStep>, text: String) {
        match self {
            Report::Spinner => {}
            Report::Lines => eprintln!("{text}"),
            Report::To(f) => f(step, text),
        }
    }
}

/// A backend ready to launch: what its machines boot from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The base image's identity for manifests: a sha256 for baked images, an AMI id on EC2.
    pub base_image: String,
    /// Made now (baked), rather than found ready.
    pub fresh: bool,
    /// Where it lives, for people: an image directory, a region.
    pub location: String,
}

/// Where machines of one builder come from.
#[async_trait]
pub trait Backend: Send + Sync {
    /// What the machines come from, for manifests and the inputs digest — known without
    /// preparing anything that costs a bake (EC2 resolves the AMI, once).
    async fn origin(&self) -> Result<Origin>;

    /// Makes launches possible: bakes or finds the image, resolves the AMI. The first call
    /// does the work; later ones return its answer.
    async fn prepare(&self, report: &Report) -> Result<Prepared>;

    /// Starts a machine that will accept `keys.client` and present `keys.host`. Returns once
    /// the machine is started, not once it is reachable.
    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine>;

    /// How many of this backend's machines may run at once by default (QEMU: host CPUs and
    /// memory; EC2: `max_instances`).
    fn capacity(&self) -> usize;

    /// Whether [`MachineSpec::disks`] reach the machine (local hypervisors: yes).
    fn attaches_disks(&self) -> bool {
        false
    }

    /// What a machine costs while it runs, for a run's spend cap and `build --plan`.
    fn cost(&self) -> Cost {
        Cost::Local
    }

    /// The machine in a few words, for `build --plan`: backend, image, type or shape.
    fn summary(&self) -> String;

    /// Removes what the run's machines of this backend shared (a cloud's temporary
    /// security group), once they are all gone. The run calls it as it ends.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// How many times a target starts again on a fresh machine when its machine is taken
    /// away from outside (a spot reclaim); local machines are never taken away.
    fn retries_on_reclaim(&self) -> u32 {
        0
    }
}

/// What a backend's machine costs while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    /// A machine on this host: no spend, no instance-hours.
    Local,
    /// A cloud machine at most this many US dollars an hour (its dearest type).
    PerHour(f64),
    /// A cloud machine whose builder gives no price.
    Unpriced,
}

/// The backend-specific half of a running machine.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Stops the machine and removes everything it left on the host. `force` skips the
    /// graceful step. Called at most once, by [`Machine`].
    async fn terminate(&mut self, force: bool) -> Result<()>;
    /// The synchronous last resort for `Drop`: kill and remove without waiting politely.
    fn terminate_now(&mut self);
    /// `Some(description)` once the machine has stopped by itself.
    fn exited(&mut self) -> Option<String>;
    /// A guest reachable without SSH: only in-process test machines have one.
    fn direct_guest(&mut self) -> Option<Box<dyn Guest>> {
        None
    }
}

/// A running machine. Teardown runs exactly once: through [`Machine::teardown`], or, if the
/// owner is dropped first (panic, cancelled future), through `Drop`.
pub struct Machine {
    pub id: String,
    pub label: String,
    pub endpoint: Endpoint,
    /// The guest's serial console, kept after teardown for post-mortems.
    pub console_log: PathBuf,
    /// The console as runner reads it into `console_log`, where it does (QEMU).
    pub serial: Option<console::Console>,
    /// The machine's private directory (keys for `--keep-failed` and `vm shell` go there).
    pub dir: PathBuf,
    pub boot_timeout: Duration,
    /// The address the guest reaches the host's loopback at (QEMU user networking:
    /// 10.0.2.2), for URLs that name 127.0.0.1.
    pub loopback_alias: Option<&'static str>,
    /// The console watched while it boots: before its sshd says it listens, a handshake
    /// attempt only stalls (QEMU's user network accepts TCP for the guest).
    pub watch: Option<boot::BootWatch>,
    /// How the boot went, phase by phase, once [`Machine::connect`] returned.
    pub boot_phases: Vec<boot::BootPhase>,
    /// How it started, for the log: `cold`, `warm (snapshot …)`, `cold (why not warm)`.
    pub start: String,
    /// Marked by the backend when the machine is taken away from outside.
    pub lost: Lost,
    /// The host file of the machine's writable layer over [`MachineSpec::cache`], in the
    /// guest the disk with serial [`crate::guest::cache::SERIAL`]; it goes with the machine.
    pub cache_layer: Option<PathBuf>,
    instance: Option<Box<dyn Instance>>,
}

impl Machine {
    pub fn new(
        dir: &dir::MachineDir,
        spec: &MachineSpec,
        endpoint: Endpoint,
        console_log: PathBuf,
        instance: Box<dyn Instance>,
    ) -> Machine {
        Machine {
            id: dir.id.clone(),
            label: spec.label.clone(),
            endpoint,
            console_log,
            serial: None,
            dir: dir.path.clone(),
            boot_timeout: spec.boot_timeout,
            loopback_alias: None,
            watch: None,
            boot_phases: vec![],
            start: String::new(),
            lost: Lost::default(),
            cache_layer: None,
            instance: Some(instance),
        }
    }

    pub fn watching(mut self, watch: boot::BootWatch) -> Machine {
        self.watch = Some(watch);
        self
    }

    /// A name for messages: `bookworm-amd64 (machine 3f2a9c1e)`.
    pub fn describe(&self) -> String {
        describe(&self.label, &self.id)
    }

    pub fn exited(&mut self) -> Option<String> {
        self.instance.as_mut()?.exited()
    }

    /// After the guest went silent (a lost connection, a command without an exit status):
    /// whether the machine itself stopped, as [`Error::MachineDied`] naming `phase` and its
    /// console. Waits up to `wait` for the hypervisor to notice.
    pub async fn died(&mut self, phase: &str, wait: Duration) -> Option<Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(why) = self.lost.why() {
                return Some(self.reclaimed(phase, why.to_owned()));
            }
            if let Some(status) = self.exited() {
                return Some(Error::MachineDied {
                    machine: self.describe(),
                    status: format!("died during {phase} ({status})"),
                    console: self.console_log.clone(),
                    tail: self.console_tail().await,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The error of a machine taken away during `phase`.
    pub fn reclaimed(&self, phase: &str, why: String) -> Error {
        Error::MachineReclaimed {
            machine: self.describe(),
            phase: phase.to_owned(),
            why,
        }
    }

    /// Waits until the guest accepts SSH with the pinned host key (or the machine stops, or
    /// the boot timeout passes).
    pub async fn connect(&mut self, keys: &GuestKeys) -> Result<Box<dyn Guest>> {
        if let Some(g) = self.instance.as_mut().and_then(|i| i.direct_guest()) {
            return Ok(g);
        }
        let (endpoint, console) = (self.endpoint.clone(), self.console_log.clone());
        let booting = Booting {
            name: self.describe(),
            endpoint: &endpoint,
            boot_timeout: self.boot_timeout,
            console: &console,
        };
        let session = ssh::wait_ready(booting, keys, || {
            if let Some(status) = self.exited() {
                return Probe::Exited(status);
            }
            let Some(w) = self.watch.as_mut() else {
                return Probe::Ready;
            };
            match (w.poll(), w.stuck()) {
                (_, Some(why)) => Probe::Stuck(why.to_owned()),
                (true, None) => Probe::Ready,
                (false, None) => Probe::NotYet,
            }
        })
        .await;
        if let Some(w) = self.watch.take() {
            self.boot_phases = match &session {
                Ok(_) => w.finish(),
                Err(_) => w.seen().to_vec(),
            };
        }
        match session {
            Ok(s) => Ok(Box::new(s)),
            Err(Error::BootTimeout {
                machine,
                secs,
                console,
                ..
            }) => Err(Error::BootTimeout {
                machine,
                secs,
                console,
                reached: match self.boot_phases.last() {
                    Some(_) => format!("; it reached: {}", boot::describe(&self.boot_phases)),
                    None if std::fs::metadata(&self.console_log).is_ok_and(|m| m.len() > 0) => {
                        "; its console shows none of runner's boot markers".into()
                    }
                    None => "; nothing on its console yet".into(),
                },
            }),
            Err(Error::MachineDied {
                machine, status, ..
            }) => Err(Error::MachineDied {
                machine,
                status,
                console: self.console_log.clone(),
                tail: self.console_tail().await,
            }),
            Err(e) => Err(e),
        }
    }

    /// The console's last lines, once a stopped machine's console has been read to its end.
    async fn console_tail(&self) -> String {
        if let Some(serial) = &self.serial {
            serial.closed(Duration::from_secs(1)).await;
        }
        crate::logs::tail(&self.console_log, 20)
    }

    /// Idempotent: the second call does nothing. Returns once the console log is complete.
    pub async fn teardown(&mut self, force: bool) -> Result<()> {
        let done = match self.instance.take() {
            Some(mut inst) => inst.terminate(force).await,
            None => Ok(()),
        };
        if let Some(serial) = &self.serial {
            serial.closed(Duration::from_secs(2)).await;
        }
        done
    }

    /// Leaves the machine running (for `--keep-failed`); `runner gc` removes it later.
    pub fn keep(&mut self, registry: &Registry) {
        // Forgotten, not dropped: dropping would run the backend's kill-on-drop safety nets.
        if let Some(inst) = self.instance.take() {
            std::mem::forget(inst);
        }
        registry.unregister(&self.id);
        let _ = record::mark_kept(&self.dir);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut inst) = self.instance.take() {
            inst.terminate_now();
        }
    }
}

/// How errors and events name a machine: its label and id.
pub fn describe(label: &str, id: &str) -> String {
    format!("{label} (machine {id})")
}
