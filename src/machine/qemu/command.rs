//! The QEMU command line of a build machine, and the virtual board it runs on.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::image::Image;
use crate::config::{Arch, Init, Shape};

/// What QEMU will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
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

/// Everything one machine's command line depends on.
pub struct Launch<'a> {
    pub image: &'a Image,
    pub accel: Accel,
    pub label: &'a str,
    pub shape: Shape,
    /// The machine directory: overlay, seed, QMP socket, pidfile.
    pub dir: &'a Path,
    pub console: &'a Path,
    /// Loopback port forwarded to the guest's port 22.
    pub ssh_port: u16,
}

impl Launch<'_> {
    pub fn command(&self) -> Command {
        let img = self.image;
        let Board {
            machine,
            cpu,
            console: tty,
        } = board(img.arch, self.accel);
        let mut c = Command::new(qemu_binary(img.arch));
        c.arg("-name")
            .arg(format!("runner-{}", self.label))
            .args(["-machine", machine, "-accel", self.accel.qemu_name()])
            .args(["-cpu", cpu, "-smp", &self.shape.vcpus.to_string()])
            .args(["-m", &format!("{}M", self.shape.memory.mib())])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .arg("-append")
            .arg(format!(
                "console={tty} root=/dev/vda rw panic=-1 quiet{}",
                match img.info.recipe.init {
                    Init::Lean => "",
                    Init::Systemd => " runner.init=/lib/systemd/systemd",
                }
            ));
        self.disk(
            &mut c,
            "overlay.qcow2",
            "root",
            "format=qcow2,discard=unmap",
        );
        self.disk(&mut c, "seed.tar", "seed", "format=raw,readonly=on");
        c.arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22",
                self.ssh_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.dir.join("qmp.sock").display()
            ))
            .arg("-pidfile")
            .arg(self.dir.join("qemu.pid"));
        c
    }

    fn disk(&self, c: &mut Command, file: &str, id: &str, extra: &str) {
        c.arg("-drive")
            .arg(format!(
                "file={},if=none,id={id},{extra}",
                self.dir.join(file).display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive={id}")]);
    }
}
