//! An in-process backend for unit tests of the run: machines that boot at once, a guest that
//! does what each target's [`Behaviour`] says, and a journal of launches and teardowns, so
//! the dispatcher's limits, keep-going, cancellation, timeouts, keep-failed and teardown
//! ordering are tested in milliseconds. Machines still get real directories and records, so
//! "nothing left behind" is checked the same way as for real machines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::dir::MachineDir;
use super::record::MachineRecord;
use super::{Backend, Instance, Machine, MachineSpec, Origin, Prepared, Report};
use crate::artifacts::{ArtifactFile, Limits};
use crate::error::{Error, Result};
use crate::guest::{Endpoint, ExitStatus, Guest, GuestKeys, Input, Output, Provisioned};
use crate::logs::LogSink;
use crate::paths::Dirs;

/// What a target's machine does when provisioned.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Exits with this code after `after`.
    Exit { code: u32, after: Duration },
    /// Panics inside the guest call (a bug in runner, as far as the run can tell).
    Panic,
    /// Stands for a guest whose machine dies mid-script.
    Dies,
    /// The target's first machine is taken away from outside (a spot reclaim) `after` into
    /// its script; the machines it gets after that succeed.
    Reclaimed { after: Duration },
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour::Exit {
            code: 0,
            after: Duration::ZERO,
        }
    }
}

#[derive(Default)]
pub struct Shared {
    /// `launch <label>`, `teardown <label>`, `provision <label>`, in order.
    pub journal: Mutex<Vec<String>>,
    pub live: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Shared {
    pub fn journal(&self) -> Vec<String> {
        self.journal.lock().unwrap().clone()
    }

    fn note(&self, s: String) {
        self.journal.lock().unwrap().push(s);
    }
}

pub struct FakeBackend {
    pub dirs: Dirs,
    pub capacity: usize,
    /// By target name; absent: succeed at once.
    pub behaviour: HashMap<String, Behaviour>,
    /// Every target produces this one artifact.
    pub artifact: (&'static str, &'static [u8]),
    pub shared: Arc<Shared>,
    /// What each machine costs (spend-cap tests).
    pub cost: super::Cost,
    pub retries_on_reclaim: u32,
}

impl FakeBackend {
    pub fn new(dirs: &Dirs) -> FakeBackend {
        FakeBackend {
            dirs: dirs.clone(),
            capacity: 2,
            behaviour: HashMap::new(),
            artifact: ("out.txt", b"built\n"),
            shared: Arc::default(),
            cost: super::Cost::Local,
            retries_on_reclaim: 1,
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    async fn origin(&self) -> Result<Origin> {
        Ok(Origin::Qemu(super::qemu::image::ImageRecord {
            distro: "debian".into(),
            suite: "fake".into(),
            arch: crate::config::Arch::Amd64,
            packages: vec![],
            disk: crate::config::Size(1 << 30),
            init: Default::default(),
            cloud: None,
        }))
    }

    async fn prepare(&self, _report: &Report) -> Result<Prepared> {
        Ok(Prepared {
            base_image: "0".repeat(64),
            fresh: false,
            location: "memory".into(),
        })
    }

    async fn launch(&self, spec: &MachineSpec, _keys: &GuestKeys) -> Result<Machine> {
        let dir = MachineDir::create(&self.dirs, |id| {
            MachineRecord::new(id, "fake", &spec.label, 0)
        })?;
        let live = self.shared.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.peak.fetch_max(live, Ordering::SeqCst);
        let first = !self
            .shared
            .journal()
            .contains(&format!("launch {}", spec.label));
        self.shared.note(format!("launch {}", spec.label));
        let lost = super::Lost::default();
        let behaviour = match self.behaviour.get(&spec.label).cloned() {
            Some(Behaviour::Reclaimed { .. }) if !first => Behaviour::default(),
            b => b.unwrap_or_default(),
        };
        let inst = FakeInstance {
            label: spec.label.clone(),
            dir: dir.path.clone(),
            shared: self.shared.clone(),
            guest: Some(FakeGuest {
                label: spec.label.clone(),
                behaviour,
                lost: lost.clone(),
                artifact: self.artifact,
                shared: self.shared.clone(),
            }),
            done: false,
        };
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port: 0,
            user: "root".into(),
        };
        let console = dir.path.join("console.log");
        let mut machine = Machine::new(&dir, spec, endpoint, console, Box::new(inst));
        machine.lost = lost;
        Ok(machine)
    }

    fn retries_on_reclaim(&self) -> u32 {
        self.retries_on_reclaim
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn cost(&self) -> super::Cost {
        self.cost
    }

    fn summary(&self) -> String {
        "fake".into()
    }
}

struct FakeInstance {
    label: String,
    dir: std::path::PathBuf,
    shared: Arc<Shared>,
    guest: Option<FakeGuest>,
    done: bool,
}

impl FakeInstance {
    fn gone(&mut self, how: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        self.shared.note(format!("{how} {}", self.label));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait]
impl Instance for FakeInstance {
    async fn terminate(&mut self, _force: bool) -> Result<()> {
        self.gone("teardown");
        Ok(())
    }

    fn terminate_now(&mut self) {
        self.gone("teardown (drop)");
    }

    fn exited(&mut self) -> Option<String> {
        None
    }

    fn direct_guest(&mut self) -> Option<Box<dyn Guest>> {
        self.guest.take().map(|g| Box::new(g) as Box<dyn Guest>)
    }
}

struct FakeGuest {
    label: String,
    behaviour: Behaviour,
    /// The machine's: what a backend that saw it taken away would mark.
    lost: super::Lost,
    artifact: (&'static str, &'static [u8]),
    shared: Arc<Shared>,
}

#[async_trait]
impl Guest for FakeGuest {
    async fn deliver(&self, _how: &crate::guest::Delivery<'_>, _log: &LogSink) -> Result<()> {
        Ok(())
    }

    async fn provision(
        &self,
        _script: &[u8],
        _env: &[(String, String)],
        _leak: Duration,
        _log: &LogSink,
    ) -> Result<Provisioned> {
        self.shared.note(format!("provision {}", self.label));
        match &self.behaviour {
            Behaviour::Exit { code, after } => {
                tokio::time::sleep(*after).await;
                Ok(Provisioned {
                    status: ExitStatus::Code(*code),
                    leftovers: None,
                })
            }
            Behaviour::Panic => panic!("fake guest of {} panics", self.label),
            Behaviour::Dies => Err(Error::MachineDied {
                machine: self.label.clone(),
                status: "died during provision (powered off)".into(),
                console: "console.log".into(),
                tail: String::new(),
            }),
            Behaviour::Reclaimed { after } => {
                tokio::time::sleep(*after).await;
                self.lost.mark("terminated from outside (fake)".into());
                // The connection to a machine taken away just hangs.
                std::future::pending().await
            }
        }
    }

    async fn collect(
        &self,
        _globs: &[String],
        dest: &Path,
        _limits: &Limits,
        _compress: bool,
        _log: &LogSink,
    ) -> Result<Vec<ArtifactFile>> {
        let (name, bytes) = self.artifact;
        std::fs::write(dest.join(name), bytes).expect("staging is writable");
        Ok(vec![ArtifactFile {
            path: name.into(),
            size: bytes.len() as u64,
            sha256: crate::digest::sha256_hex(bytes),
        }])
    }

    async fn exec(
        &self,
        _command: &str,
        _stdin: Option<Input>,
        _stdout: Output,
        _stderr: Output,
    ) -> Result<ExitStatus> {
        Ok(ExitStatus::Code(0))
    }

    async fn close(self: Box<Self>) {}
}
