//! Local machines: a copy-on-write overlay on a cached base image, booted by QEMU straight
//! into the image's kernel, with SSH forwarded on a loopback port.
//!
//! Each machine owns one directory under the state dir (overlay, seed, QMP socket, console
//! log, record). Teardown asks QEMU to quit over QMP, kills its process group if it lingers,
//! and removes the directory but keeps the console log beside it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};

use super::accel::Accel;
use super::state::{MachineRecord, processes_mentioning};
use super::{Backend, Endpoint, Instance, Machine, MachineSpec, qmp::Qmp, registry};
use crate::config::Arch;
use crate::error::{Error, IoContext, Result};
use crate::image::Image;
use crate::keys::GuestKeys;
use crate::paths::Dirs;

/// How long QEMU gets to quit over QMP before its process group is killed.
const GRACE: Duration = Duration::from_secs(3);

pub struct QemuBackend {
    pub image: Image,
    pub accel: Accel,
    pub dirs: Dirs,
}

#[async_trait]
impl Backend for QemuBackend {
    async fn launch(&self, spec: &MachineSpec, keys: &GuestKeys) -> Result<Machine> {
        let machines = self.dirs.machines();
        std::fs::create_dir_all(&machines)
            .ctx(|| format!("cannot create state directory `{}`", machines.display()))?;
        let id = new_id();
        let dir = machines.join(&id);
        create_private_dir(&dir)?;
        let port = free_port()?;
        let record = MachineRecord::new(&id, "qemu", &spec.label, port);
        // The record goes first: from here on, `runner gc` can find whatever exists.
        record.write(&dir)?;
        let logs = self.dirs.logs();
        std::fs::create_dir_all(&logs)
            .ctx(|| format!("cannot create log directory `{}`", logs.display()))?;
        let console = logs.join(format!("{id}-console.log"));

        let mut inst = QemuInstance {
            id: id.clone(),
            dir: dir.clone(),
            child: None,
        };
        let child = async {
            overlay(&self.image.qcow2, &dir.join("overlay.qcow2")).await?;
            write_seed(&dir.join("seed.tar"), keys, &spec.label)?;
            let mut cmd = self.command(spec, &dir, &console, port);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(open_log(&dir.join("qemu.stderr"))?)
                // Its own process group: a terminal's Ctrl-C reaches runner only, which then
                // tears the machine down in order instead of QEMU vanishing underneath it.
                .process_group(0)
                .kill_on_drop(true);
            cmd.spawn()
                .ctx(|| format!("cannot start `{}`", qemu_binary(self.image.arch)))
        }
        .await;
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                inst.terminate_now();
                return Err(e);
            }
        };
        registry::register(&id, child.id().map(|p| p as i32), dir.clone());
        inst.child = Some(child);
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        };
        // sshd runs with -e, so its "Server listening" line reaches the serial console.
        Ok(
            Machine::new(id, spec, endpoint, console.clone(), Box::new(inst))
                .with_ready_hint(console, "Server listening"),
        )
    }
}

impl QemuBackend {
    fn command(&self, spec: &MachineSpec, dir: &Path, console: &Path, port: u16) -> Command {
        let img = &self.image;
        let mut c = Command::new(qemu_binary(img.arch));
        let Board {
            machine,
            cpu,
            console: tty,
        } = board(img.arch, self.accel);
        let drive = |file: &Path, id: &str, extra: &str| {
            format!("file={},if=none,id={id},{extra}", file.display())
        };
        c.arg("-name")
            .arg(format!("runner-{}", spec.label))
            .args([
                "-machine",
                machine,
                "-accel",
                self.accel.qemu_name(),
                "-cpu",
                cpu,
            ])
            .args([
                "-smp",
                &spec.vcpus.to_string(),
                "-m",
                &format!("{}M", spec.memory_mib),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .arg("-append")
            .arg(format!("console={tty} root=/dev/vda rw panic=-1 quiet"))
            .arg("-drive")
            .arg(drive(
                &dir.join("overlay.qcow2"),
                "root",
                "format=qcow2,discard=unmap",
            ))
            .args(["-device", "virtio-blk-pci,drive=root"])
            .arg("-drive")
            .arg(drive(
                &dir.join("seed.tar"),
                "seed",
                "format=raw,readonly=on",
            ))
            .args(["-device", "virtio-blk-pci,drive=seed"])
            .arg("-netdev")
            .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ))
            .arg("-pidfile")
            .arg(dir.join("qemu.pid"));
        c
    }
}

/// The virtual board for an architecture and accelerator: one place, shared with the probe,
/// so the KVM probe tests exactly what a launch would run.
pub struct Board {
    pub machine: &'static str,
    pub cpu: &'static str,
    pub console: &'static str,
}

pub fn board(arch: Arch, accel: Accel) -> Board {
    let (machine, console) = match arch {
        Arch::Amd64 => ("q35", "ttyS0"),
        Arch::Arm64 => ("virt", "ttyAMA0"),
    };
    let cpu = match (arch, accel) {
        (_, Accel::Kvm) => "host",
        // Under TCG a plain CPU model is markedly faster for the ciphers SSH uses.
        (Arch::Amd64, Accel::Tcg) => "qemu64",
        (Arch::Arm64, Accel::Tcg) => "cortex-a57",
    };
    Board {
        machine,
        cpu,
        console,
    }
}

pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

struct QemuInstance {
    id: String,
    dir: PathBuf,
    child: Option<Child>,
}

#[async_trait]
impl Instance for QemuInstance {
    async fn terminate(&mut self, force: bool) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let done = !force && quit_politely(&self.dir.join("qmp.sock"), &mut child).await;
            if !done {
                kill_group(&child);
                let _ = child.wait().await;
            }
        }
        self.remove();
        Ok(())
    }

    fn terminate_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child);
            let _ = child.start_kill();
        }
        self.remove();
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status.to_string())
    }
}

impl QemuInstance {
    fn remove(&mut self) {
        // Anything else that still names the directory is a leftover of this machine.
        for pid in processes_mentioning(&self.dir) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove `{}`: {e}", self.dir.display());
        }
        registry::unregister(&self.id);
    }
}

/// The VM is disposable, so `quit` (not an ACPI powerdown) is the graceful path: QEMU
/// flushes and exits; the guest's state is thrown away anyway.
async fn quit_politely(socket: &Path, child: &mut Child) -> bool {
    let quit = async {
        let mut qmp = Qmp::connect(socket).await?;
        let _ = qmp.execute("quit", json!({})).await;
        child.wait().await.ctx(|| "cannot wait for QEMU")
    };
    tokio::time::timeout(GRACE, quit)
        .await
        .is_ok_and(|r| r.is_ok())
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

async fn overlay(base: &Path, overlay: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img` (is qemu-utils installed?)")?;
    if !out.status.success() {
        return Err(Error::other(format!(
            "`qemu-img create` failed for `{}`: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The seed is a plain tar written raw to a second disk: the guest's initrd unpacks it with
/// busybox tar. It carries the per-machine keys, so it is private and dies with the machine.
fn write_seed(path: &Path, keys: &GuestKeys, hostname: &str) -> Result<()> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    let hostname: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    add("authorized_keys", 0o600, keys.authorized_keys().as_bytes())
        .and_then(|_| {
            add(
                "ssh_host_ed25519_key",
                0o600,
                keys.host_private_openssh().unwrap_or_default().as_bytes(),
            )
        })
        .and_then(|_| add("hostname", 0o644, format!("{hostname}\n").as_bytes()))
        .ctx(|| "cannot build the seed archive")?;
    let bytes = tar.into_inner().ctx(|| "cannot finish the seed archive")?;
    write_private(path, &bytes)
}

pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .ctx(|| format!("cannot write `{}`", path.display()))
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).ctx(|| format!("cannot create `{}`", path.display()))
}

pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("cannot create machine directory `{}`", dir.display()))
}

pub(super) fn new_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A loopback port nobody listens on now. QEMU binds it a moment later; the ports this
/// process handed out are remembered so parallel launches never collide with each other.
fn free_port() -> Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
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
