//! Cloud-image builders end to end. No distribution's image can be downloaded here, so the
//! stand-in (`tests/cloud/standin-image.sh`: a GPT disk whose EFI system partition holds
//! systemd-boot, started by OVMF, with systemd and cloud-init as distributions ship them) is
//! served from a loopback HTTP server with a SHA256SUMS file beside it.
//!
//! Each test has its own image cache, so a first use really downloads and customises.

mod common;

use std::path::{Path, PathBuf};

use common::http::FileServer;
use common::*;
use serde_json::Value;

/// A directory served over HTTP: the stand-in image and its checksum file.
fn served_image() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let image = common::standin::standin_image().join("disk.qcow2");
    // A hard link where possible: the image is hundreds of MiB.
    let served = dir.path().join("standin-cloud-amd64.qcow2");
    std::fs::hard_link(&image, &served)
        .or_else(|_| std::fs::copy(&image, &served).map(|_| ()))
        .unwrap();
    let sha = runner::digest::sha256_file(&served).unwrap();
    std::fs::write(
        dir.path().join("SHA256SUMS"),
        format!(
            "{}  other-image.qcow2\n{sha}  standin-cloud-amd64.qcow2\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    (dir, sha)
}

/// A world whose image cache is its own (removed with it).
struct CloudWorld {
    world: World,
    cache: tempfile::TempDir,
}

impl CloudWorld {
    fn new(project: &Path) -> CloudWorld {
        CloudWorld {
            world: World::with_project(project.to_owned()),
            cache: tempfile::Builder::new()
                .prefix("runner-cloud-cache-")
                .tempdir()
                .unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.world.cmd();
        cmd.env("RUNNER_CACHE_DIR", self.cache.path());
        run_shown(cmd, args)
    }

    /// The files of the download cache, its lock files aside.
    fn downloads(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.cache.path().join("images/downloads"))
            .map(|rd| {
                rd.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_none_or(|e| e != "lock"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A cloud builder with no `firmware` key: the stand-in (UEFI only) is recognised as such.
fn builder(image: &str, extra: &str) -> String {
    format!(
        "backend = \"qemu\"\narch = \"amd64\"\nimage = {{ {image} }}\n\
         vcpus = 2\nmemory = \"1G\"\ndisk = \"4G\"\n{extra}"
    )
}

/// What a build's script checks and makes: it runs as root through sudo for the image's
/// user, on the image the bake script marked, then builds hello-c.
const SCRIPT: &str = r#"#!/bin/sh
set -eu
test "$(id -u)" = 0
test "${SUDO_USER:-}" = builder
test -f /etc/runner-baked
stat -c %a /build > "$RUNNER_OUT/build-mode.txt"
exec sh ./make.sh
"#;

#[test]
fn hello_c_builds_on_a_cloud_image_through_sudo_and_its_derived_image_is_reused() {
    let (served, sha) = served_image();
    // The first answer for the image breaks off a third of the way: runner resumes it.
    let size = std::fs::metadata(served.path().join("standin-cloud-amd64.qcow2"))
        .unwrap()
        .len();
    let server = FileServer::start(
        served.path().to_owned(),
        "standin-cloud-amd64.qcow2",
        1,
        size / 3,
    );
    let project = hello_project(&server);
    let w = CloudWorld::new(project.path());

    let out = w.run(&["build", "hello", "--message-format", "json"]);
    assert!(out.status.success(), "the first build failed");
    assert_resumed_once_and_kept(&server, &w, size, &sha);
    assert_image_steps(&stdout(&out));
    let artifacts = project.path().join("artifacts/hello");
    let info = std::fs::read_to_string(artifacts.join("build-info.txt")).unwrap();
    assert!(info.contains("machine: x86_64"), "{info}");
    let mode = std::fs::read_to_string(artifacts.join("build-mode.txt")).unwrap();
    assert_eq!(
        mode.trim(),
        "1777",
        "/build is writable by the image's user"
    );

    assert_manifest_names_the_image(&artifacts, &server, &sha);
    w.world.assert_clean();

    let listed = stdout(&w.run(&["image", "list"]));
    assert!(
        listed.contains("cloud") && listed.contains("standin-cloud-amd64.qcow2"),
        "{listed}"
    );

    // Reproducing from the manifest: the recorded image, held to the recorded sha256, in a
    // fresh machine on the same derived image — no download, no customising boot.
    let made = image_records(&w);
    assert_eq!(made.len(), 1, "{made:?}");
    let record: Value = serde_json::from_slice(&std::fs::read(&made[0].0).unwrap()).unwrap();
    assert_eq!(record["firmware"], "uefi", "auto-detected: {record}");
    assert_eq!(record["recipe"]["cloud"]["firmware"], "auto", "{record}");
    let saved = project.path().join("first.json");
    std::fs::copy(artifacts.join("manifest.json"), &saved).unwrap();
    let out = w.run(&[
        "reproduce",
        saved.to_str().unwrap(),
        "--context",
        project.path().join("src").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "not reproduced");
    assert!(
        stdout(&out).contains("base image: identical"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        server.requests_for("standin-cloud-amd64.qcow2").len(),
        2,
        "the image was downloaded again"
    );
    assert_eq!(
        image_records(&w),
        made,
        "the image was made again (or another one)"
    );

    // Nothing left behind: no machine, no process, nothing for gc.
    w.world.assert_clean();
    let gc = w.run(&["gc"]);
    assert!(gc.status.success());
    assert_eq!(stdout(&gc), "", "gc found leftovers");
    let rm = w.run(&["image", "rm", "cloud"]);
    assert!(rm.status.success() && stdout(&rm).contains("removed cloud"));
    assert!(
        !w.downloads()
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "img")),
        "the download outlived the only image made from it: {:?}",
        w.downloads()
    );
}

#[test]
fn a_wrong_sha256_is_refused_before_any_boot_and_nothing_is_kept() {
    let (served, _) = served_image();
    let server = FileServer::start(served.path().to_owned(), "", 0, 0);
    let wrong = "ab".repeat(32);
    let image = format!(
        "url = \"{}\", sha256 = \"{wrong}\"",
        server.url("standin-cloud-amd64.qcow2")
    );
    let project = project_with(&[("mismatch", &builder(&image, ""))]);
    let w = CloudWorld::new(project.path());
    let out = w.run(&["image", "build", "mismatch"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let actual =
        runner::digest::sha256_file(&served.path().join("standin-cloud-amd64.qcow2")).unwrap();
    for needle in [
        "builder `mismatch`",
        wrong.as_str(),
        actual.as_str(),
        "removed",
    ] {
        assert!(err.contains(needle), "no `{needle}` in: {err}");
    }
    assert_eq!(w.downloads(), Vec::<PathBuf>::new(), "a download was kept");
    assert!(!w.world.machines().exists(), "a machine was started");
    w.world.assert_clean();

    // A file the server does not have is one refused request, not five.
    let missing = format!(
        "url = \"{}\", sha256 = \"{wrong}\"",
        server.url("absent.qcow2")
    );
    std::fs::write(
        project.path().join("builders/missing.toml"),
        builder(&missing, ""),
    )
    .unwrap();
    let out = w.run(&["image", "build", "missing"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert_eq!(server.requests_for("absent.qcow2").len(), 1);
}

#[test]
fn a_cloud_image_that_presents_its_own_host_key_is_refused() {
    let (served, sha) = served_image();
    let server = FileServer::start(served.path().to_owned(), "", 0, 0);
    let image = format!(
        "url = \"{}\", sha256 = \"{sha}\"",
        server.url("standin-cloud-amd64.qcow2")
    );
    // An image whose sshd ignores the host key cloud-init installs: it uses one of its own.
    let bake = "#!/bin/sh\nset -e\nssh-keygen -q -t ed25519 -N '' -f /etc/ssh/foreign_key\n\
                echo 'HostKey /etc/ssh/foreign_key' > /etc/ssh/sshd_config.d/00-foreign.conf\n";
    let project = Project::new()
        .builder(
            "foreign",
            &builder(&image, "firmware = \"uefi\"\nbake_script = \"bake.sh\"\n"),
        )
        .file("builders/bake.sh", bake)
        .done();
    let w = CloudWorld::new(project.path());
    let out = w.run(&["vm", "run", "foreign", "--", "true"]);
    assert!(!out.status.success(), "a foreign host key was accepted");
    let err = stderr(&out);
    assert!(err.contains("host key mismatch"), "{err}");
    w.world.assert_clean();
}

#[test]
fn a_disk_with_no_bootloader_fails_at_once_naming_the_firmware_each_way() {
    // A blank disk: no partition table, no boot code. `auto` takes BIOS for it; SeaBIOS
    // then finds nothing, as OVMF does when the builder insists on UEFI.
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&blank)
        .arg("1G")
        .status()
        .unwrap();
    assert!(made.success());
    let image = format!("path = \"{}\"", blank.display());
    let project = Project::new()
        .builder("blank", &builder(&image, ""))
        .builder("blank-uefi", &builder(&image, "firmware = \"uefi\"\n"))
        .done();
    let w = CloudWorld::new(project.path());
    for (name, needles) in [
        (
            "blank",
            &[
                "SeaBIOS",
                "firmware = \"auto\" chose bios",
                "neither",
                "firmware = \"uefi\"",
            ][..],
        ),
        (
            "blank-uefi",
            &[
                "OVMF",
                "the builder sets firmware = \"uefi\"",
                "firmware = \"bios\"",
            ][..],
        ),
    ] {
        let started = std::time::Instant::now();
        let out = w.run(&["image", "build", name]);
        let took = started.elapsed();
        assert!(!out.status.success(), "a blank disk booted");
        let err = stderr(&out);
        assert!(err.contains("never reached its kernel"), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "no `{needle}` in: {err}");
        }
        assert!(took.as_secs() < 120, "{name}: {took:?} to say so");
        w.world.assert_clean();
    }
}

/// A project building hello-c on a cloud builder whose image `server` serves with its
/// SHA256SUMS; its user is `builder`, its package `make` (the stand-in has the compiler), its
/// bake script marks it.
fn hello_project(server: &FileServer) -> tempfile::TempDir {
    let image = format!(
        "url = \"{}\", checksum_url = \"{}\"",
        server.url("standin-cloud-amd64.qcow2"),
        server.url("SHA256SUMS")
    );
    let extra = "ssh_user = \"builder\"\npackages = [\"make\"]\n\
                 bake_script = \"bake.sh\"\n";
    Project::new()
        .builder("cloud", &builder(&image, extra))
        .file(
            "builders/bake.sh",
            "#!/bin/sh\nset -e\necho baked > /etc/runner-baked\n",
        )
        .file("src/Makefile", &read_repo("examples/hello-c/src/Makefile"))
        .file("src/hello.c", &read_repo("examples/hello-c/src/hello.c"))
        .file("src/make.sh", &read_repo("provision-scripts/make.sh"))
        .file("build.sh", SCRIPT)
        .toml(
            "[target.hello]\nbuilder = \"cloud\"\nscript = \"build.sh\"\ncontext = \"src\"\n\
             artifacts = [\"hello\", \"build-info.txt\", \"build-mode.txt\"]\ntimeout = \"30m\"\n",
        )
        .done()
}

/// The image was asked for twice, the second time from where the first broke off, and one
/// verified download is kept.
fn assert_resumed_once_and_kept(server: &FileServer, w: &CloudWorld, size: u64, sha: &str) {
    let requests = server.requests_for("standin-cloud-amd64.qcow2");
    assert_eq!(
        requests.len(),
        2,
        "one cut download, one resume: {requests:?}"
    );
    assert_eq!(requests[0].range, None);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", size / 3).as_str()),
        "the second request resumes where the first broke off"
    );
    assert_eq!(
        w.downloads(),
        vec![w.cache.path().join(format!("images/downloads/{sha}.img"))],
        "one verified download, no partial file"
    );
}

/// Each customising step was an `image_step` event, in order, the boot naming the firmware
/// `auto` chose.
fn assert_image_steps(events: &str) {
    let steps: Vec<(String, String)> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "image_step")
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut kinds: Vec<&str> = steps.iter().map(|(k, _)| k.as_str()).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "download",
            "verify",
            "boot",
            "cloud_init",
            "packages",
            "bake_script",
            "seal"
        ],
        "{steps:?}"
    );
    let boot = &steps.iter().find(|(k, _)| k == "boot").unwrap().1;
    assert!(boot.contains("firmware auto: uefi"), "{boot}");
}

/// The manifest records where the image came from and what it was made into.
fn assert_manifest_names_the_image(artifacts: &Path, server: &FileServer, sha: &str) {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("manifest.json")).unwrap())
            .unwrap();
    let cloud = &m["builder"]["recipe"]["cloud"];
    assert_eq!(cloud["url"], server.url("standin-cloud-amd64.qcow2"), "{m}");
    assert_eq!(cloud["sha256"], sha, "{m}");
    let derived = m["base_image_sha256"].as_str().unwrap().to_owned();
    assert_eq!(derived.len(), 64);
    assert_ne!(derived, sha, "the derived image is not the download");
}

/// Each derived image's record and when it was written.
fn image_records(w: &CloudWorld) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(w.cache.path().join("images"))
        .unwrap()
        .filter_map(|e| {
            let record = e.ok()?.path().join("image.json");
            Some((
                record.clone(),
                std::fs::metadata(&record).ok()?.modified().ok()?,
            ))
        })
        .collect();
    out.sort();
    out
}

fn read_repo(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}
