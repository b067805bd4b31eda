//! The QEMU command line of a build machine, and the virtual board it runs on.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::image::Image;
use crate::config::{Arch, Firmware, Init, Shape};

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

/// `qemu-system-… --version`'s first line, once per binary: snapshots are only valid for the
/// QEMU that made them.
pub async fn qemu_version(arch: Arch) -> String {
    static SEEN: tokio::sync::OnceCell<std::sync::Mutex<std::collections::HashMap<Arch, String>>> =
        tokio::sync::OnceCell::const_new();
    let map = SEEN.get_or_init(|| async { Default::default() }).await;
    if let Some(v) = map.lock().unwrap().get(&arch) {
        return v.clone();
    }
    let v = Command::new(qemu_binary(arch))
        .arg("--version")
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    map.lock().unwrap().insert(arch, v.clone());
    v
}

/// Everything one machine's command line depends on.
pub struct Launch<'a> {
    pub image: &'a Image,
    pub accel: Accel,
    pub label: &'a str,
    pub shape: Shape,
    /// The machine directory: overlay, seed, QMP socket, pidfile.
    pub dir: &'a Path,
    /// Loopback port forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// Read-only disks beyond the context slot (cold boots only: a snapshot's devices are
    /// fixed).
    pub extra_disks: &'a [crate::machine::Disk],
    /// A warm-start template, or a machine restored from one (`incoming`: the snapshot's
    /// device state, loaded through QMP once QEMU is up: see `warm::resume`).
    pub warm: bool,
    pub incoming: Option<&'a Path>,
    /// The snapshot's memory file, for a template (which writes it, shared) and for a
    /// restored machine (which maps it copy-on-write): see [`Launch::memory`].
    pub ram: Option<&'a Path>,
}

/// A snapshot is only valid for the command line that made it: a change to the devices
/// below must change this, to a number never used before (4 was an earlier command line
/// whose snapshots may still be cached).
pub const LAYOUT: u32 = 5;

impl Launch<'_> {
    pub fn command(&self) -> Command {
        let img = self.image;
        let Board {
            machine,
            cpu,
            console: tty,
        } = board(img.arch, self.accel);
        // Distributions built for x86-64-v2 (RHEL 9 and its rebuilds) do not start on
        // TCG's plain qemu64; runner's own images keep it (faster for SSH's ciphers).
        let cpu = match (img.cloud(), img.arch, self.accel) {
            (Some(_), Arch::Amd64, Accel::Tcg) => "Nehalem",
            _ => cpu,
        };
        let mut c = Command::new(qemu_binary(img.arch));
        c.arg("-name")
            .arg(format!("runner-{}", self.label))
            .args([
                "-machine",
                &self.machine(machine),
                "-accel",
                self.accel.qemu_name(),
            ])
            .args(["-cpu", cpu, "-smp", &self.shape.vcpus.to_string()])
            .args(["-m", &format!("{}M", self.shape.memory.mib())])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot");
        self.memory(&mut c);
        match img.cloud() {
            // A cloud image boots as it would anywhere: firmware, then its own bootloader.
            Some(_) => {
                if let Some(code) = firmware_file(img.firmware(), img.arch) {
                    c.arg("-bios").arg(code);
                }
            }
            None => {
                c.arg("-kernel")
                    .arg(&img.kernel)
                    .arg("-initrd")
                    .arg(&img.initrd)
                    .arg("-append")
                    .arg(format!(
                        "console={tty} root=/dev/vda rw panic=-1 quiet{}{}",
                        match img.info.recipe.init() {
                            Init::Lean => "",
                            Init::Systemd => " runner.init=/lib/systemd/systemd",
                        },
                        if self.warm { " runner.warm=1" } else { "" }
                    ));
            }
        }
        self.devices(&mut c);
        self.host_side(&mut c);
        c
    }

    /// The guest's disks and its seed port, in an order a snapshot depends on (see LAYOUT).
    fn devices(&self, c: &mut Command) {
        let cloud = self.image.cloud().is_some();
        // Firmware boots the root disk first, whatever else is attached.
        let root = if cloud { ",bootindex=0" } else { "" };
        self.disk(
            c,
            "overlay.qcow2",
            "root",
            "format=qcow2,discard=unmap",
            root,
        );
        self.disk(
            c,
            seed_file(self.image),
            "seed",
            "format=raw,readonly=on",
            "",
        );
        // The context slot: always there, so a snapshot's devices match every machine's;
        // a machine's is backed by its context pack (see `seed::context_slot`).
        c.arg("-drive")
            .arg(format!(
                "file={},if=none,id=ctx,format=qcow2,readonly=on",
                self.dir.join("context.qcow2").display()
            ))
            .args(["-device", "virtio-blk-pci,drive=ctx,serial=runner-ctx"]);
        // The cache slot, also always there: a layer of the machine's own over a build
        // cache's generation, or over nothing (see `seed::cache_slot`).
        c.arg("-drive")
            .arg(format!(
                "file={},if=none,id=cache,format=qcow2,discard=unmap",
                self.dir.join(super::seed::CACHE_SLOT).display()
            ))
            .args([
                "-device",
                &format!(
                    "virtio-blk-pci,drive=cache,serial={}",
                    crate::guest::cache::SERIAL
                ),
            ]);
        // The seed of a machine restored from a snapshot arrives here.
        c.args(["-device", "virtio-serial-pci,id=vser"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=seedport,path={},server=on,wait=off",
                self.dir.join("seed.sock").display()
            ))
            .args([
                "-device",
                "virtserialport,bus=vser.0,chardev=seedport,name=runner.seed",
            ]);
        // A warm machine's generation ID changes with every restore (`auto`: QEMU draws one
        // per start), and the guest kernel reseeds its generator when it sees that, on top of
        // the seed's randomness. x86 only: QEMU 7.2 has no vmgenid for aarch64's `virt`.
        if self.warm && self.image.arch == Arch::Amd64 {
            c.args(["-device", "vmgenid,guid=auto"]);
        }
        for (n, d) in self.extra_disks.iter().enumerate() {
            c.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=extra{n},format=raw,readonly=on",
                    d.path.display()
                ))
                .args([
                    "-device",
                    &format!("virtio-blk-pci,drive=extra{n},serial={}", d.serial),
                ]);
        }
    }

    /// Network with the forwarded SSH port, console (stdout), QMP, pidfile, and the state to restore.
    fn host_side(&self, c: &mut Command) {
        c.arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22",
                self.ssh_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .args(["-device", "virtio-rng-pci"])
            // The console goes to QEMU's stdout, a pipe runner reads into a capped log (see
            // `machine::console`); a `file:` backend would grow with whatever the guest prints.
            .args(self.console())
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.dir.join("qmp.sock").display()
            ))
            .arg("-pidfile")
            .arg(self.dir.join("qemu.pid"));
        // The state is named once QEMU is up, after the migration capabilities are set.
        if self.incoming.is_some() {
            c.args(["-incoming", "defer"]);
        }
    }

    /// The board, with its memory from [`Launch::memory`]'s backend when there is one.
    fn machine(&self, machine: &str) -> String {
        match self.ram {
            Some(_) => format!("{machine},memory-backend=ram"),
            None => machine.to_owned(),
        }
    }

    /// A warm start's memory is a file. The template maps it shared, so the guest's memory
    /// is written to it, and its saved state leaves memory out (`x-ignore-shared`). Each
    /// restored machine maps it private: the pages it only reads stay the host's page cache,
    /// one copy for every machine restored from the snapshot, and only what a guest writes
    /// becomes its own. N machines cost what they write, not N × their memory.
    fn memory(&self, c: &mut Command) {
        let Some(ram) = self.ram else { return };
        let share = if self.incoming.is_some() { "off" } else { "on" };
        c.arg("-object").arg(format!(
            "memory-backend-file,id=ram,size={}M,mem-path={},share={share}",
            self.shape.memory.mib(),
            // QEMU's option syntax: a comma in a value is written twice.
            ram.display().to_string().replace(',', ",,")
        ));
    }

    /// The serial console on QEMU's stdout. A cloud image booted by SeaBIOS shares it with
    /// SeaBIOS's debug port: SeaBIOS says there ("No bootable device.") when it finds no
    /// bootloader, which the serial port never shows, so a wrong firmware is seen at once.
    fn console(&self) -> Vec<&'static str> {
        let seabios = self.image.cloud().is_some()
            && self.image.arch == Arch::Amd64
            && self.image.firmware() == Firmware::Bios;
        match seabios {
            false => vec!["-serial", "stdio"],
            true => vec![
                "-chardev",
                "stdio,id=console,mux=on,signal=off",
                "-serial",
                "chardev:console",
                "-device",
                "isa-debugcon,iobase=0x402,chardev=console",
            ],
        }
    }

    fn disk(&self, c: &mut Command, file: &str, id: &str, extra: &str, device: &str) {
        c.arg("-drive")
            .arg(format!(
                "file={},if=none,id={id},{extra}",
                self.dir.join(file).display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive={id}{device}")]);
    }
}

/// The seed disk's file in a machine directory: runner's tar, or a cloud image's NoCloud
/// volume.
pub fn seed_file(image: &Image) -> &'static str {
    match image.cloud() {
        Some(_) => "seed.img",
        None => "seed.tar",
    }
}

/// The firmware image QEMU starts with: none for SeaBIOS (QEMU's own default on x86); the
/// distribution's OVMF or QEMU_EFI build for UEFI (Debian: `ovmf`, `qemu-efi-aarch64`).
/// `auto` is resolved before a machine starts (see `image::firmware`); unresolved, it is
/// QEMU's default.
pub fn firmware_file(firmware: Firmware, arch: Arch) -> Option<&'static str> {
    match (firmware, arch) {
        (Firmware::Bios | Firmware::Auto, _) => None,
        (Firmware::Uefi, Arch::Amd64) => Some("/usr/share/ovmf/OVMF.fd"),
        (Firmware::Uefi, Arch::Arm64) => Some("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),
    }
}
