//! Choosing between KVM and TCG. On some hosts /dev/kvm opens fine and trivial guests run,
//! yet a Linux guest hangs during boot, so `auto` boots the image's own kernel under KVM with
//! a probe flag and a short deadline, and falls back to TCG if it does not come back.
//! The verdict is cached in the state dir per host kernel, QEMU binary and image kernel.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::command::{Accel, board, qemu_binary, qemu_version};
use super::image::Image;
use crate::machine::AccelChoice;

/// A probe boot that has not printed its marker by then is treated as hung. A working KVM
/// reaches the initrd in well under a second; TCG on these hosts takes 2-3 s.
const PROBE_DEADLINE: Duration = Duration::from_secs(8);
pub const PROBE_MARKER: &str = "runner-probe-ok";

pub async fn resolve(choice: AccelChoice, image: &Image, state_dir: &Path) -> Accel {
    let native = image.arch.is_native();
    match choice {
        AccelChoice::Tcg => Accel::Tcg,
        // An explicit request is honoured even if it will hang: that is what an override is for.
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Auto if !native || !kvm_accessible() => Accel::Tcg,
        // A cloud image has no runner initrd to answer the probe: it follows what the last
        // probe of one of runner's own images on this kernel and QEMU found, else TCG (the
        // safe side: a guest that hangs under KVM would hang the build).
        AccelChoice::Auto if image.cloud().is_some() => {
            unprobed(choice, image.arch, state_dir).await
        }
        AccelChoice::Auto => {
            let key = cache_key(image).await;
            let cache = state_dir.join("accel-probe.json");
            if let Some(hit) = read_cache(&cache, &key) {
                return hit;
            }
            let verdict = if probe_kvm(image).await {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            if verdict == Accel::Tcg {
                tracing::info!("KVM is present but a guest did not boot under it; using TCG");
            }
            write_cache(&cache, &key, verdict);
            verdict
        }
    }
}

/// The accelerator for an image runner cannot probe with (a cloud image has no runner
/// initrd to answer): what the last probe of one of runner's own images on this kernel and
/// QEMU found, else TCG — the safe side, since a guest that hangs under KVM hangs its build.
pub async fn unprobed(choice: AccelChoice, arch: crate::config::Arch, state_dir: &Path) -> Accel {
    match choice {
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Auto if !arch.is_native() || !kvm_accessible() => Accel::Tcg,
        AccelChoice::Auto => {
            let host = host_key(arch).await;
            match read_cached(&state_dir.join("accel-probe.json")) {
                Some(c) if c.key.rsplit_once('|').is_some_and(|(h, _)| h == host) => c.accel,
                _ => Accel::Tcg,
            }
        }
    }
}

fn kvm_accessible() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

async fn probe_kvm(image: &Image) -> bool {
    let board = board(image.arch, Accel::Kvm);
    let mut cmd = Command::new(qemu_binary(image.arch));
    cmd.args([
        "-machine",
        board.machine,
        "-accel",
        "kvm",
        "-cpu",
        board.cpu,
    ])
    .args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"])
    .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd)
    .arg("-append")
    .arg(format!("console={} panic=-1 runner.probe=1", board.console))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let Ok(child) = cmd.spawn() else { return false };
    match tokio::time::timeout(PROBE_DEADLINE, child.wait_with_output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).contains(PROBE_MARKER),
        // Timed out: dropping the future drops the child, which kill_on_drop kills.
        _ => false,
    }
}

#[derive(Serialize, Deserialize)]
struct Cached {
    key: String,
    accel: Accel,
}

async fn cache_key(image: &Image) -> String {
    format!("{}|{}", host_key(image.arch).await, image.digest)
}

/// The host half of a probe's key: the kernel and the QEMU that ran it.
async fn host_key(arch: crate::config::Arch) -> String {
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{}|{}", uname.trim(), qemu_version(arch).await)
}

fn read_cache(path: &Path, key: &str) -> Option<Accel> {
    read_cached(path).filter(|c| c.key == key).map(|c| c.accel)
}

fn read_cached(path: &Path) -> Option<Cached> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_cache(path: &Path, key: &str, accel: Accel) {
    let c = Cached {
        key: key.to_owned(),
        accel,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, serde_json::to_vec(&c).unwrap_or_default());
}
