//! Starting a QEMU machine, three ways: a cold boot, a warm start from a snapshot, and the
//! template a snapshot is made from. All three share one command line (see `command`), so a
//! snapshot's devices are every machine's.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::{Accel, Launch, qemu_binary, seed_file};
use super::image::{Image, firmware};
use super::instance::QemuInstance;
use super::warm::{Key, Snapshot};
use super::{free_port, seed, warm};
use crate::config::Shape;
use crate::error::{Error, IoContext, Result};
use crate::guest::{Endpoint, GuestKeys};
use crate::logs::LogSink;
use crate::machine::boot::{BootWatch, CLOUD_MARKERS, LEAN_MARKERS, NO_BOOTLOADER, QUIET_CONSOLE};
use crate::machine::console::Console;
use crate::machine::dir::MachineDir;
use crate::machine::record::MachineRecord;
use crate::machine::{Machine, MachineSpec, Registry};
use crate::paths::Dirs;

/// What a restored guest prints once it has its identity, and how long that may take on a
/// busy host before the snapshot counts as damaged.
const IDENTITY: &str = "runner-warm: identity";
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(20);
/// What a warm-start template prints once it waits for its seed: the snapshot point.
const WAITING: &str = "runner-warm: waiting";
/// A template's console log keeps at most this much: a boot prints a few KiB.
const TEMPLATE_CONSOLE: u64 = 1 << 20;
/// What a restored guest says (and then powers off) when it could not reseed its generator.
const RESEED_FAILED: &str = "runner-warm: reseed failed";

/// Every marker any start looks for on the console.
fn markers() -> Vec<&'static str> {
    let boot = LEAN_MARKERS.iter().chain(CLOUD_MARKERS).map(|(_, m)| *m);
    let firmware = NO_BOOTLOADER.iter().copied();
    boot.chain(firmware)
        .chain([IDENTITY, WAITING, RESEED_FAILED])
        .collect()
}

/// What every start needs.
pub struct Start<'a> {
    pub dirs: &'a Dirs,
    pub registry: &'a Arc<Registry>,
    pub image: &'a Image,
    pub accel: Accel,
    pub shape: Shape,
}

/// A machine's directory and disks, QEMU not yet started.
struct Prepared {
    dir: MachineDir,
    inst: QemuInstance,
    console: std::path::PathBuf,
    /// The console as runner reads it, once QEMU runs.
    serial: Option<Console>,
    port: u16,
    started: Instant,
}

impl Start<'_> {
    async fn prepare(
        &self,
        label: &str,
        pack: Option<&Path>,
        cache: seed::CacheSlot<'_>,
    ) -> Result<Prepared> {
        let started = Instant::now();
        let port = free_port()?;
        let dir = MachineDir::create(self.dirs, |id| MachineRecord::new(id, "qemu", label, port))?;
        let console = dir.console_log(self.dirs)?;
        let inst = QemuInstance {
            id: dir.id.clone(),
            dir: dir.path.clone(),
            child: None,
            registry: self.registry.clone(),
            seed_port: None,
        };
        // From here on, an error or a dropped future drops `inst`, which removes the machine.
        // A cloud image's machines get its full disk (the first boot grows into it).
        let size = self.image.cloud().map(|_| self.image.info.recipe.disk);
        let overlay = dir.path.join("overlay.qcow2");
        seed::overlay(&self.image.qcow2, &self.image.format, size, &overlay).await?;
        seed::context_slot(&dir.path, pack).await?;
        seed::cache_slot(&dir.path, cache).await?;
        Ok(Prepared {
            dir,
            inst,
            console,
            serial: None,
            port,
            started,
        })
    }

    /// Starts QEMU, its serial console (stdout) read into a log of at most `console_limit`.
    fn spawn(
        &self,
        p: &mut Prepared,
        label: &str,
        mut cmd: tokio::process::Command,
        console_limit: u64,
    ) -> Result<()> {
        let log = LogSink::create(&p.console, console_limit, |_| {})
            .ctx(|| format!("cannot create `{}`", p.console.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(open_log(&p.dir.path.join("qemu.stderr"))?)
            // Its own process group: a terminal's Ctrl-C reaches runner only, which then
            // tears the machine down in order instead of QEMU vanishing underneath it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().ctx(|| {
            format!(
                "cannot start `{}` for {label}",
                qemu_binary(self.image.arch)
            )
        })?;
        let serial = child.stdout.take().expect("piped");
        p.serial = Some(Console::spawn(serial, log, markers()));
        p.inst.child = Some(child);
        p.inst.register();
        Ok(())
    }

    fn launch<'a>(&'a self, p: &'a Prepared, label: &'a str) -> Launch<'a> {
        Launch {
            image: self.image,
            accel: self.accel,
            label,
            shape: self.shape,
            dir: &p.dir.path,
            ssh_port: p.port,
            extra_disks: &[],
            warm: false,
            incoming: None,
            ram: None,
        }
    }

    fn machine(&self, p: Prepared, spec: &MachineSpec, how: String) -> Machine {
        let cloud = self.image.cloud();
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port: p.port,
            user: cloud.map_or("root", |c| c.ssh_user.as_str()).into(),
        };
        let serial = p.serial.clone().expect("QEMU was started");
        let watch = match cloud {
            // sshd runs with -e, so its "Server listening" line reaches the serial console.
            None => BootWatch::new(serial.clone(), LEAN_MARKERS, "Server listening", p.started),
            Some(c) => BootWatch::new(serial.clone(), CLOUD_MARKERS, CLOUD_MARKERS[0].1, p.started)
                .or_after(QUIET_CONSOLE)
                .or_stuck(firmware::no_bootloader(
                    c.firmware,
                    self.image.firmware(),
                    self.image.arch,
                    self.image.choice,
                )),
        };
        let mut m =
            Machine::new(&p.dir, spec, endpoint, p.console, Box::new(p.inst)).watching(watch);
        m.serial = Some(serial);
        // QEMU's user network: the host's loopback is 10.0.2.2 from inside.
        m.loopback_alias = Some("10.0.2.2");
        m.start = how;
        m.cache_layer = spec.cache.as_ref().map(|_| m.dir.join(seed::CACHE_SLOT));
        m
    }

    pub async fn cold(&self, spec: &MachineSpec, keys: &GuestKeys, how: String) -> Result<Machine> {
        let pack = spec.disks.first().map(|d| d.path.as_path());
        let mut p = self.prepare(&spec.label, pack, cache_slot(spec)).await?;
        let seed = p.dir.path.join(seed_file(self.image));
        match self.image.cloud() {
            Some(c) => seed::write_nocloud(&seed, keys, &c.ssh_user, &spec.label)?,
            None => seed::write_seed(&seed, keys, &spec.label)?,
        }
        let launch = Launch {
            extra_disks: spec.disks.get(1..).unwrap_or_default(),
            ..self.launch(&p, &spec.label)
        };
        let cmd = launch.command();
        self.spawn(&mut p, &spec.label, cmd, spec.console_limit)?;
        Ok(self.machine(p, spec, how))
    }

    /// A machine restored from `snap`; on any error it is torn down again (the caller boots
    /// cold), and a snapshot that would not load is discarded.
    pub async fn warm(
        &self,
        spec: &MachineSpec,
        keys: &GuestKeys,
        snap: &Snapshot,
    ) -> Result<Machine> {
        let pack = spec.disks.first().map(|d| d.path.as_path());
        let mut p = self.prepare(&spec.label, pack, cache_slot(spec)).await?;
        seed::write_empty_seed(&p.dir.path.join("seed.tar"))?;
        let launch = Launch {
            warm: true,
            incoming: Some(&snap.state),
            ram: Some(&snap.ram),
            ..self.launch(&p, &spec.label)
        };
        let cmd = launch.command();
        self.spawn(&mut p, &spec.label, cmd, spec.console_limit)?;
        let seed = || seed::seed(keys, &spec.label);
        let dir = p.dir.path.clone();
        let inst = &mut p.inst;
        // Err(_, true): the snapshot itself is at fault and is discarded.
        let mut loaded = 0.0;
        let resumed = match warm::resume(&dir, &snap.state, &seed, &mut || inst.exited_now()).await
        {
            Ok(port) => {
                loaded = p.started.elapsed().as_secs_f64();
                p.inst.seed_port = Some(port);
                // A state QEMU loads but whose guest never takes its seed (damaged memory)
                // is as unusable as one QEMU refuses.
                let reached = wait_for_console(&mut p, IDENTITY, IDENTITY_TIMEOUT).await;
                let serial = p.serial.as_ref().expect("QEMU was started");
                reached.map_err(|e| match serial.seen(RESEED_FAILED).is_some() {
                    // Not the snapshot's fault alone (it loaded and took its seed): keep it.
                    true => (unseeded(&spec.label, &p.console), false),
                    false => (e, true),
                })
            }
            // QEMU exits when it cannot load the state: the snapshot is at fault. (It may
            // still be exiting when its QMP socket closed.)
            Err(e) => Err((e, exits_soon(&mut p.inst).await)),
        };
        match resumed {
            Ok(()) => {
                let mut m = self.machine(p, spec, format!("warm (snapshot {})", snap.id()));
                // QEMU started, the state loaded, the machine resumed and its seed sent.
                if let Some(w) = m.watch.as_mut() {
                    w.note("loaded", loaded);
                }
                Ok(m)
            }
            Err((e, damaged)) => {
                if damaged {
                    snap.discard();
                }
                let stderr = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
                Err(Error::Snapshot {
                    problem: format!("the warm start failed; QEMU said: {}", stderr.trim()),
                    source: Some(Box::new(e)),
                })
            }
        }
    }

    /// Boots the template, saves it once it waits for its seed, tears it down.
    pub async fn template(
        &self,
        label: &str,
        snap: &Snapshot,
        key: &Key,
        timeout: Duration,
    ) -> Result<()> {
        let label = format!("snapshot of {label}");
        let mut p = self
            .prepare(&label, None, seed::CacheSlot::Template)
            .await?;
        seed::write_empty_seed(&p.dir.path.join("seed.tar"))?;
        // A new file (a new inode, never one truncated under a machine that maps it), 0600
        // like the state: QEMU would make it with its umask.
        let _ = std::fs::remove_file(&snap.ram);
        drop(crate::private::create(&snap.ram)?);
        let launch = Launch {
            warm: true,
            ram: Some(&snap.ram),
            ..self.launch(&p, &label)
        };
        let cmd = launch.command();
        self.spawn(&mut p, &label, cmd, TEMPLATE_CONSOLE)?;
        wait_for_console(&mut p, WAITING, timeout).await?;
        // Settled in its wait loop, not in the middle of the line it just printed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let saved = warm::save(&p.dir.path.join("qmp.sock"), snap, key).await;
        use crate::machine::Instance;
        p.inst.terminate(true).await?;
        saved
    }
}

/// Waits until the console shows `marker`; an error names the marker and the console's end.
async fn wait_for_console(p: &mut Prepared, marker: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let serial = p.serial.as_ref().expect("QEMU was started");
    loop {
        if serial.seen(marker).is_some() {
            return Ok(());
        }
        let exited = p.inst.exited_now();
        if exited || tokio::time::Instant::now() > deadline {
            if exited {
                // The console's last bytes reach its log once the pipe has ended.
                serial.closed(Duration::from_secs(1)).await;
            }
            let tail = crate::logs::tail(&p.console, 10);
            return Err(Error::Snapshot {
                problem: format!(
                    "the machine did not reach `{marker}` in {}s: {tail}",
                    timeout.as_secs()
                ),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unseeded(machine: &str, console: &Path) -> Error {
    Error::Unseeded {
        machine: machine.to_owned(),
        console: console.to_owned(),
    }
}

async fn exits_soon(inst: &mut QemuInstance) -> bool {
    for _ in 0..100 {
        if inst.exited_now() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).ctx(|| format!("cannot create `{}`", path.display()))
}

/// What `spec`'s cache slot holds.
fn cache_slot(spec: &MachineSpec) -> seed::CacheSlot<'_> {
    match &spec.cache {
        Some(generation) => seed::CacheSlot::Over(generation),
        None => seed::CacheSlot::Empty,
    }
}
