//! The EC2 user data really works: a Debian cloud image (systemd + cloud-init, as the
//! official AMIs are; the stand-in of `tests/common/standin.rs`, booted by UEFI firmware
//! through its own bootloader) boots under QEMU with the exact user data the EC2 backend
//! sends, delivered through a NoCloud `cidata` seed. It must accept runner's client key, present
//! runner's host key (OpenSSH with strict checking against that key alone), have none of
//! its own host keys, and power itself off once its lifetime has passed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::standin::{OVMF, standin_image};
use common::*;
use runner::guest::keys::{GuestKeys, openssh_public};
use runner::machine::ec2::userdata;

/// Long enough to boot systemd + cloud-init under software emulation and log in.
const LIFETIME: u64 = 300;

/// A `cidata` FAT volume with `user-data` and `meta-data`: cloud-init's NoCloud seed.
fn nocloud_seed(path: &Path, user_data: &str) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(4 << 20).unwrap();
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .unwrap();
    let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
    let root = fs.root_dir();
    for (name, text) in [
        ("user-data", user_data.to_owned()),
        (
            "meta-data",
            "instance-id: runner-nocloud-test\nlocal-hostname: runner-test\n".to_owned(),
        ),
    ] {
        let mut file = root.create_file(name).unwrap();
        file.truncate().unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
}

/// The EFI variable the bootloader sets to its name and version (the Boot Loader Interface).
const LOADER_INFO: &str = "LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

#[test]
fn the_ec2_user_data_pins_both_keys_and_powers_the_machine_off_at_expiry() {
    let image = standin_image();
    let work = tempfile::tempdir().unwrap();
    let keys = GuestKeys::generate().unwrap();
    let expires = now_unix() + LIFETIME;
    let user_data = userdata::cloud_config(&keys, "root", expires, None).unwrap();
    eprintln!("user data:\n{user_data}");
    nocloud_seed(&work.path().join("seed.img"), &user_data);
    let overlay = work.path().join("overlay.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image.join("disk.qcow2"))
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let console = work.path().join("console.log");
    // As a downloaded cloud image boots: OVMF finds systemd-boot on the disk's ESP, which
    // starts the kernel; no -kernel. No default devices, and no option ROM on the NIC (OVMF
    // would otherwise try to boot from the network).
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-bios",
            OVMF,
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=qcow2",
            overlay.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=root,bootindex=0"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=seed,format=raw,readonly=on",
            work.path().join("seed.img").display()
        ))
        .args(["-device", "virtio-blk-pci,drive=seed"])
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut qemu_guard = Kill(qemu);

    // OpenSSH, trusting runner's host key and nothing else, logging in with runner's key.
    let client = work.path().join("client");
    std::fs::write(&client, keys.client_private_openssh().unwrap()).unwrap();
    std::fs::set_permissions(&client, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let known = work.path().join("known_hosts");
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{port} {}\n",
            openssh_public(keys.host_public())
        ),
    )
    .unwrap();
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&client)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-p",
                &port.to_string(),
                "root@127.0.0.1",
                cmd,
            ])
            .output()
            .unwrap()
    };
    let logged_in = loop {
        let out = ssh(&format!(
            "ls /etc/ssh; cat /etc/ssh/ssh_host_ed25519_key.pub; cloud-init schema --system 2>&1; \
             tr -d '\\0' < /sys/firmware/efi/efivars/{LOADER_INFO} 2>&1 || true"
        ));
        if out.status.success() {
            break out;
        }
        if let Some(status) = qemu_guard.0.try_wait().unwrap() {
            panic!(
                "the guest stopped ({status}) before SSH worked; console:\n{}",
                tail(&console)
            );
        }
        assert!(
            now_unix() + 30 < expires,
            "no SSH login before the lifetime ran out; last ssh: {}\nconsole:\n{}",
            stderr(&out),
            tail(&console)
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    let listing = stdout(&logged_in);
    eprintln!(
        "logged in {}s before expiry:\n{listing}",
        expires.saturating_sub(now_unix())
    );
    assert!(
        listing.contains(&openssh_public(keys.host_public())[..80]),
        "{listing}"
    );
    assert!(
        !listing.contains("schema errors"),
        "cloud-init found the user data invalid: {listing}"
    );
    assert!(
        listing.contains("systemd-boot"),
        "not booted by the image's own bootloader: {listing}"
    );
    for other in ["ssh_host_rsa_key", "ssh_host_ecdsa_key"] {
        assert!(
            !listing.contains(other),
            "the image kept its own {other}: {listing}"
        );
    }

    // A key runner did not hand out is refused.
    let stranger = GuestKeys::generate().unwrap();
    std::fs::write(&client, stranger.client_private_openssh().unwrap()).unwrap();
    assert!(
        !ssh("true").status.success(),
        "a foreign client key was accepted"
    );

    // The dead-man switch: the guest powers off by itself, at its expiry and not before.
    let deadline = Instant::now() + Duration::from_secs(expires.saturating_sub(now_unix()) + 120);
    let status = loop {
        if let Some(s) = qemu_guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 120 s after its expiry; console:\n{}",
            tail(&console)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let stopped = now_unix();
    eprintln!(
        "powered off {}s after expiry ({status})",
        stopped as i64 - expires as i64
    );
    assert!(
        stopped + 2 >= expires,
        "powered off {}s early",
        expires - stopped
    );
    assert!(status.success(), "QEMU did not exit cleanly: {status}");
    assert!(
        tail(&console).contains("reboot: Power down"),
        "no power-down on the console:\n{}",
        tail(&console)
    );
}

fn tail(path: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
