//! A stand-in for a downloaded distribution cloud image (`tests/cloud/standin-image.sh`): a
//! GPT disk whose own bootloader (systemd-boot on its ESP) UEFI firmware starts, booting
//! Debian with systemd and cloud-init from a NoCloud seed. Boot it with OVMF (`-bios`), no
//! `-kernel`: see `tests/cloud_init.rs`.

use std::path::PathBuf;
use std::process::Command;

use super::{image_cache, repo};

/// The firmware the stand-in boots with (Debian's `ovmf` package).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The directory holding `disk.qcow2`, baked once per version of the script (~2 minutes)
/// under the test cache; concurrent callers wait on one lock for the one bake.
pub fn standin_image() -> PathBuf {
    let script = repo().join("tests/cloud/standin-image.sh");
    let text = std::fs::read(&script).unwrap();
    let digest = runner::manifest::sha256_hex(&text);
    let out = image_cache().join(format!("standin-image-{}", &digest[..16]));
    std::fs::create_dir_all(image_cache()).unwrap();
    let lock = std::fs::File::create(image_cache().join("standin-image.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if !out.join("disk.qcow2").exists() {
        let mirror = runner::machine::qemu::image::mirror::resolve(
            std::env::var("RUNNER_MIRROR").ok().as_deref(),
        )
        .unwrap();
        let status = Command::new(&script)
            .arg(&mirror)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "stand-in cloud image bake failed");
    }
    out
}
