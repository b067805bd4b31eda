//! One context pack per run, on real QEMU guests: a fan-out of eight targets over one context
//! packs once and every guest sees the same bytes (attached as a disk, nothing over SSH); and
//! the presigned-fetch path, a guest fetching the pack from the S3 test server through QEMU's
//! user network, refusing a tampered pack by its digest.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use garage::{BUCKET, Garage, KEY, SECRET};
use serde_json::Value;

/// What the guest saw: a digest of every path, mode and content under the context dir.
const TREE_DIGEST: &str = "#!/bin/bash\nset -e\nfind . -print0 | LC_ALL=C sort -z | \
    while IFS= read -r -d '' p; do stat -c '%n %a %F' \"$p\"; [ -f \"$p\" ] && sha256sum \"$p\"; done \
    | sha256sum > \"$RUNNER_OUT/tree.sha256\"; if grep -q ' /build/src overlay ' /proc/mounts; then echo overlay >> \"$RUNNER_OUT/tree.sha256\"; fi\n";

#[test]
fn a_fan_out_packs_the_context_once_and_every_guest_sees_the_same_tree() {
    let mut toml = String::new();
    for n in 0..8 {
        toml.push_str(&format!(
            "[target.t{n}]\nbuilder = \"bookworm-amd64\"\nscript = \"tree.sh\"\ncontext = \"src\"\n\n"
        ));
    }
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("tree.sh", TREE_DIGEST)
        .file("src/main.c", "int main(void) { return 0; }\n")
        .file("src/.hidden", "dotfiles travel\n")
        .file("src/dir/nested.txt", "nested\n")
        .toml(&toml)
        .done();
    // A context no earlier run has packed (the pack cache outlives test runs).
    std::fs::write(
        p.path().join("src/nonce"),
        p.path().to_string_lossy().as_bytes(),
    )
    .unwrap();
    std::os::unix::fs::symlink("main.c", p.path().join("src/link.c")).unwrap();
    let world = World::with_project(p.path().to_owned());
    let out = world.run(&["build", "-j", "4", "--message-format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = json_events(&out);
    let packed: Vec<&Value> = all.iter().filter(|e| e["event"] == "packed").collect();
    assert_eq!(packed.len(), 8, "one pack event per target");
    assert_eq!(
        packed.iter().filter(|e| e["made"] == true).count(),
        1,
        "packed once"
    );
    let seen: Vec<String> = (0..8)
        .map(|n| {
            std::fs::read_to_string(p.path().join(format!("artifacts/t{n}/tree.sha256"))).unwrap()
        })
        .collect();
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    assert!(
        seen[0].ends_with("overlay\n"),
        "the tree was not the attached pack"
    );
    let log = std::fs::read_to_string(world.state.path().join("logs/builds/t0.log")).unwrap();
    assert!(log.contains("context: attached as a disk"), "{log}");
    world.assert_clean();
}

/// Overwrites every pack that appears under `prefix` (once each) until `stop` is set: someone
/// with write access to the bucket, racing the run whose pack key it cannot know beforehand.
fn replace_packs(
    server: &Garage,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    let c = server.client(SECRET);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut done = std::collections::HashSet::new();
        while !stop.load(Ordering::SeqCst) {
            rt.block_on(async {
                let listed = c
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix(prefix)
                    .send()
                    .await;
                for o in listed.map(|l| l.contents().to_vec()).unwrap_or_default() {
                    let key = o.key().unwrap_or_default().to_owned();
                    if done.insert(key.clone()) {
                        let body = aws_sdk_s3::primitives::ByteStream::from_static(b"not the pack");
                        let _ = c
                            .put_object()
                            .bucket(BUCKET)
                            .key(key)
                            .body(body)
                            .send()
                            .await;
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        done.len()
    })
}

#[test]
fn a_guest_fetches_the_pack_by_presigned_url_and_refuses_a_tampered_one() {
    let server = Garage::start();
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("tree.sh", TREE_DIGEST)
        .file("src/a.txt", "a\n")
        .toml(&format!(
            "[store]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n\n\
             [target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"tree.sh\"\ncontext = \"src\"\n\
             context_transfer = \"fetch\"\n",
            server.endpoint()
        ))
        .done();
    let world = World::with_project(p.path().to_owned());
    let run = |args: &[&str]| {
        let mut cmd: Command = world.cmd();
        cmd.env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SOURCE_DATE_EPOCH", "1000000000");
        let out = cmd.args(args).output().unwrap();
        eprintln!("{}\n{}", stdout(&out), stderr(&out));
        out
    };
    let out = run(&["build", "t", "--upload", "s3://bucket/ci"]);
    assert!(out.status.success());
    let log = std::fs::read_to_string(world.state.path().join("logs/builds/t.log")).unwrap();
    assert!(
        log.contains("context: fetched by the machine from the store"),
        "{log}"
    );
    assert!(
        !server.holds_a_context_pack(),
        "the shared pack outlived the run"
    );

    // Someone with write access to the bucket replaces the pack mid-run: the guest refuses it.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = replace_packs(&server, "ci/.runner/packs/", stop.clone());
    let out = run(&["build", "t", "--upload", "s3://bucket/ci", "--force"]);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(racer.join().unwrap(), 1, "no pack was there to replace");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("failed in sync"), "{}", stderr(&out));
    let log = std::fs::read_to_string(world.state.path().join("logs/builds/t.log")).unwrap();
    assert!(
        log.contains("context pack refused") || log.contains("not the pack's"),
        "{log}"
    );
    world.assert_clean();
}

#[test]
fn a_killed_runs_shared_pack_is_journaled_and_gc_removes_it() {
    let server = Garage::start();
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", "#!/bin/sh\nsleep 600\n")
        .file("src/a.txt", "a\n")
        .toml(&format!(
            "[store]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n\n\
             [target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n\
             context_transfer = \"fetch\"\n",
            server.endpoint()
        ))
        .done();
    let world = World::with_project(p.path().to_owned());
    let creds = |mut cmd: Command| {
        cmd.env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    };
    let mut child = creds(world.cmd())
        .args(["build", "t", "--upload", "s3://bucket/ci"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its pack is in the bucket: nothing of the run can clean up.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !server.holds_a_context_pack() {
        assert!(std::time::Instant::now() < deadline, "no pack was shared");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    world.gc_after_a_kill("ci/.runner/packs/", creds(world.cmd()));
    assert!(!server.holds_a_context_pack(), "gc left the pack");
    server.assert_empty();
    world.assert_clean();
}
