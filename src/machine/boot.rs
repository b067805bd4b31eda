//! Where a boot is, read from the guest's console: the markers runner's initrd, init and the
//! guest's sshd print, each timed from the machine's start, so a slow or failed boot says how
//! far it got (they become `boot` JSON events and a log line).

use std::time::Instant;

use serde::Serialize;

use super::console::Console;

/// One boot phase and when (seconds since the machine started) it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootPhase {
    pub phase: String,
    pub seconds: f64,
}

/// The console markers of runner's own images, in boot order: (phase that ends, text).
pub const LEAN_MARKERS: &[(&str, &str)] = &[
    ("firmware+kernel", "runner-initrd: start"),
    ("initrd", "runner-initrd: switch_root"),
    ("restore", "runner-warm: restored"),
    ("identity", "runner-warm: identity"),
    ("init", "runner-init: starting sshd"),
    ("sshd", "Server listening"),
];

/// The console markers of a cloud image: only runner's own user data prints one.
pub const CLOUD_MARKERS: &[(&str, &str)] = &[(
    "firmware+kernel+cloud-init",
    crate::machine::cloud_init::CONSOLE_MARKER,
)];

/// What firmware prints when it finds no bootloader on the disk: SeaBIOS (on its debug port,
/// which shares the console), and EDK II (OVMF, QEMU_EFI) falling back to its shell or, in
/// builds without one, saying so.
pub const NO_BOOTLOADER: &[&str] = &[
    "No bootable device.",
    "UEFI Interactive Shell",
    "No bootable option or device was found",
];

/// When a cloud image's console shows nothing (its kernel's console is not the serial port),
/// SSH is tried anyway after this long.
pub const QUIET_CONSOLE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct BootWatch {
    console: Console,
    markers: &'static [(&'static str, &'static str)],
    /// The text that says SSH is worth trying.
    ready: &'static str,
    started: Instant,
    /// Ready regardless of the console after this long (see [`QUIET_CONSOLE`]).
    ready_after: Option<std::time::Duration>,
    /// What to say if the firmware finds nothing to boot (see [`NO_BOOTLOADER`]).
    no_bootloader: Option<String>,
    seen: Vec<BootPhase>,
}

impl BootWatch {
    /// Watches `console` (which must watch for `markers` and `ready`) for a machine that
    /// started at `started`.
    pub fn new(
        console: Console,
        markers: &'static [(&'static str, &'static str)],
        ready: &'static str,
        started: Instant,
    ) -> BootWatch {
        BootWatch {
            console,
            markers,
            ready,
            started,
            ready_after: None,
            no_bootloader: None,
            seen: vec![],
        }
    }

    /// A machine booted by firmware: if it finds no bootloader, the boot is over, and `why`
    /// says which firmware that was and what to set.
    pub fn or_stuck(mut self, why: String) -> BootWatch {
        self.no_bootloader = Some(why);
        self
    }

    /// Why the machine will never boot, once its firmware has said it found nothing to boot.
    pub fn stuck(&self) -> Option<&str> {
        let why = self.no_bootloader.as_deref()?;
        NO_BOOTLOADER
            .iter()
            .any(|m| self.console.seen(m).is_some())
            .then_some(why)
    }

    /// Ready after `d` even if the ready text never appears.
    pub fn or_after(mut self, d: std::time::Duration) -> BootWatch {
        self.ready_after = Some(d);
        self
    }

    /// Notes newly seen markers (timed as the console saw them); true once the ready text
    /// has appeared.
    pub fn poll(&mut self) -> bool {
        for (phase, marker) in self.markers {
            if self.seen.iter().any(|s| s.phase == *phase) {
                continue;
            }
            if let Some(at) = self.console.seen(marker) {
                self.seen.push(BootPhase {
                    phase: (*phase).to_owned(),
                    seconds: at.saturating_duration_since(self.started).as_secs_f64(),
                });
            }
        }
        // Markers seen in one poll are listed in boot order, whatever order they were found.
        self.seen.sort_by(|a, b| {
            a.seconds
                .partial_cmp(&b.seconds)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        self.console.seen(self.ready).is_some()
            || self
                .ready_after
                .is_some_and(|d| self.started.elapsed() >= d)
    }

    /// The phases seen, and the SSH handshake as the last, ending now.
    pub fn finish(mut self) -> Vec<BootPhase> {
        self.poll();
        self.seen.push(BootPhase {
            phase: "ssh".into(),
            seconds: self.started.elapsed().as_secs_f64(),
        });
        self.seen
    }

    /// A phase the console cannot show (the host saw it end), `seconds` after the start.
    pub fn note(&mut self, phase: &str, seconds: f64) {
        self.seen.push(BootPhase {
            phase: phase.to_owned(),
            seconds,
        });
    }

    pub fn seen(&self) -> &[BootPhase] {
        &self.seen
    }
}

/// `firmware+kernel 1.9s, initrd 0.4s, init 0.2s, sshd 0.3s, ssh 0.2s`: each phase's own time.
pub fn describe(phases: &[BootPhase]) -> String {
    let mut last = 0.0;
    phases
        .iter()
        .map(|p| {
            let d = p.seconds - last;
            last = p.seconds;
            format!("{} {d:.2}s", p.phase)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
