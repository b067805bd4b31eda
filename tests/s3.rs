//! Publishing to a real S3-compatible server (Garage: it verifies SigV4 signatures and the
//! SHA-256 of every object and part, and lists unfinished multipart uploads), started on
//! loopback per test. Every test ends by proving the bucket holds exactly what it should:
//! no partial object and no dangling multipart upload.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use garage::{BUCKET, Garage, KEY, SECRET};

fn project(endpoint: &str, script: &str) -> tempfile::TempDir {
    Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", script)
        .toml(&format!(
            "[store]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\n\
             [target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n"
        ))
        .done()
}

/// Credentials the AWS way (environment), and nothing from the host's own AWS setup.
fn with_creds(mut cmd: Command, secret: &str) -> Command {
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

fn run_with(world: &World, secret: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = with_creds(world.cmd(), secret);
    let out = cmd.args(args).output().unwrap();
    eprintln!(
        "runner {args:?} -> {}\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Starts runner with JSON events on stdout, collected line by line on a channel.
fn spawn_json(world: &World, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = with_creds(world.cmd(), SECRET);
    let mut child = cmd
        .args(args)
        .args(["--message-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Every remaining line, once runner has exited and its stdout closed.
fn drain(rx: &mpsc::Receiver<String>) -> impl Iterator<Item = String> + '_ {
    std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(10)).ok())
}

/// Waits for the first upload progress event that is not the last one: mid-upload.
fn wait_mid_upload(rx: &mpsc::Receiver<String>) {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("no upload progress within 10 minutes");
        if line.contains("\"event\":\"transfer\"") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(
                v["bytes"].as_u64() < v["total"].as_u64(),
                "upload already done: {line}"
            );
            return;
        }
    }
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_owned()
}

const SCRIPT: &str = "#!/bin/sh\nset -e\necho hello > \"$RUNNER_OUT/small.txt\"\nhead -c 20000000 /dev/urandom > \"$RUNNER_OUT/big.bin\"\n";

/// A guest that writes `mib` MiB of random bytes, and their sha256 as the guest saw them.
fn big_script(mib: u32) -> String {
    format!(
        "#!/bin/sh\nset -e\nhead -c {mib}M /dev/urandom > \"$RUNNER_OUT/big.bin\"\n\
         sha256sum \"$RUNNER_OUT/big.bin\" | cut -d' ' -f1 > \"$RUNNER_OUT/big.sha256\"\n"
    )
}

#[test]
fn upload_publishes_artifacts_then_manifest_and_a_rebuild_is_a_cache_hit() {
    let server = Garage::start();
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let args = [
        "build",
        "t",
        "--upload",
        "s3://bucket/releases",
        "--message-format",
        "json",
    ];
    let out = run_with(&world, SECRET, &args);
    assert_eq!(out.status.code(), Some(0));
    let objects = server.objects();
    let names: Vec<&str> = objects
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap())
        .collect();
    // No signing key in this project: the provenance goes up unsigned (see tests/provenance.rs
    // for signed ones).
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "big.bin",
            "manifest.json",
            "provenance.intoto.jsonl",
            "small.txt"
        ],
        "{objects:?}"
    );
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("releases/t/")),
        "{objects:?}"
    );
    assert!(
        stdout(&out).contains("\"event\":\"transfer\""),
        "no upload progress"
    );
    // The stored bytes are what the manifest says (the 20 MB file went up in parts).
    let (manifest_key, _) = objects
        .iter()
        .find(|(k, _)| k.ends_with("manifest.json"))
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&server.get(manifest_key)).unwrap();
    for a in manifest["artifacts"].as_array().unwrap() {
        let key = a["uri"]
            .as_str()
            .unwrap()
            .strip_prefix("s3://bucket/")
            .unwrap();
        let bytes = server.get(key);
        assert_eq!(bytes.len() as u64, a["size"].as_u64().unwrap());
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &bytes).unwrap();
        assert_eq!(
            sha256_file(tmp.path()),
            a["sha256"].as_str().unwrap(),
            "{key}"
        );
    }
    // The manifest went up last.
    let c = server.client(SECRET);
    let modified = |key: &str| {
        server.block_on(async {
            let h = c
                .head_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap();
            h.last_modified().unwrap().as_nanos()
        })
    };
    let manifest_time = modified(manifest_key);
    for (k, _) in &objects {
        assert!(
            modified(k) <= manifest_time,
            "{k} is newer than the manifest"
        );
    }
    assert!(
        !proj.path().join("artifacts/t").exists(),
        "uploads must not also land locally"
    );

    // Downloaded and verified against the manifest: byte for byte what was uploaded.
    let got = tempfile::tempdir().unwrap();
    let dl = run_with(
        &world,
        SECRET,
        &[
            "artifacts",
            "get",
            "t",
            "--upload",
            "s3://bucket/releases",
            "--out",
        ]
        .into_iter()
        .chain([got.path().to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(dl.status.code(), Some(0));
    let big_key = objects
        .iter()
        .find(|(k, _)| k.ends_with("big.bin"))
        .unwrap();
    assert_eq!(
        std::fs::read(got.path().join("big.bin")).unwrap(),
        server.get(&big_key.0)
    );

    // More older builds of the same inputs than one listing page holds, all sorting before
    // this one and none complete: `artifacts ls` and the cache hit below still find it.
    let build = manifest_key.rsplit('/').nth(1).unwrap().to_owned();
    let inputs = build.split('-').next().unwrap().to_owned();
    server.block_on(async {
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        let mut puts = tokio::task::JoinSet::new();
        for n in 0..1100u64 {
            let (c, permit) = (c.clone(), limit.clone().acquire_owned().await.unwrap());
            let key = format!("releases/t/{inputs}-{}/manifest.json", 1_000_000_000 + n);
            puts.spawn(async move {
                let _permit = permit;
                c.put_object()
                    .bucket(BUCKET)
                    .key(key)
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}"))
                    .send()
                    .await
                    .unwrap();
            });
        }
        while puts.join_next().await.is_some() {}
    });
    let ls = run_with(
        &world,
        SECRET,
        &["artifacts", "ls", "t", "--upload", "s3://bucket/releases"],
    );
    assert_eq!(ls.status.code(), Some(0));
    assert!(
        stdout(&ls).contains(&format!("build {build}")),
        "{}",
        stdout(&ls)
    );

    let again = run_with(&world, SECRET, &args);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stdout(&again).contains("\"outcome\":\"cached\""),
        "{}",
        stdout(&again)
    );
    assert_eq!(server.unfinished_uploads(), Vec::<String>::new());
    world.assert_clean();
}

/// Looking for a published build in a store that does not answer is the store's error, never
/// "no published build" (which would also silently turn a cache hit into a rebuild).
#[test]
fn an_unreachable_store_is_an_error_when_looking_for_builds() {
    use runner::store::ArtifactStore;
    use runner::store::s3::{S3Store, S3Url, Settings};
    // SAFETY: the first thing this test process does, before any other thread exists.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_MAX_ATTEMPTS", "2");
    }
    let server = Garage::start();
    let state = tempfile::tempdir().unwrap();
    let dirs = runner::paths::Dirs::resolve(None, Some(state.path().to_owned()));
    let settings = Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
    };
    let url: S3Url = "s3://bucket/releases".parse().unwrap();
    let store = server.block_on(S3Store::connect(url, &settings, &dirs));
    assert!(
        server.block_on(store.latest("t")).unwrap().is_none(),
        "an empty bucket"
    );
    server.kill();
    let err = server.block_on(store.latest("t")).unwrap_err().to_string();
    assert!(
        err.contains("listing") && err.contains("s3://bucket/releases/t/"),
        "{err}"
    );
    assert!(
        server
            .block_on(store.published("t", &"0".repeat(64)))
            .is_err()
    );
}

#[test]
fn a_large_artifact_round_trips_in_parallel_parts_with_bounded_memory() {
    const MIB: u32 = 320;
    let server = Garage::start();
    let proj = project(&server.endpoint(), &big_script(MIB));
    let world = World::with_project(proj.path().to_owned());

    let (mut child, rx) = spawn_json(&world, &["build", "t", "--upload", "s3://bucket/big"]);
    let build_peak = watch_peak_rss(child.id());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(900)), Some(0));
    let events: Vec<String> = drain(&rx).collect();
    let last = events
        .iter()
        .rfind(|l| l.contains("\"event\":\"transfer\""))
        .expect("no upload progress event");
    let last: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["bytes"], last["total"], "{last}");
    assert!(
        last["total"].as_u64().unwrap() > (MIB as u64) << 20,
        "{last}"
    );

    let got = tempfile::tempdir().unwrap();
    let mut get = with_creds(world.cmd(), SECRET);
    let mut child = get
        .args([
            "artifacts",
            "get",
            "t",
            "--upload",
            "s3://bucket/big",
            "--out",
        ])
        .arg(got.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let get_peak = watch_peak_rss(child.id());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(300)), Some(0));

    let guest_sum = std::fs::read_to_string(got.path().join("big.sha256")).unwrap();
    assert_eq!(sha256_file(&got.path().join("big.bin")), guest_sum.trim());
    let (build_peak, get_peak) = (
        build_peak.load(Ordering::SeqCst) >> 20,
        get_peak.load(Ordering::SeqCst) >> 20,
    );
    eprintln!(
        "peak RSS for a {MIB} MiB artifact: build+upload {build_peak} MiB, download {get_peak} MiB"
    );
    assert!(build_peak > 0 && get_peak > 0, "RSS was not measured");
    // Bounded: far below the artifact's size (parts are 8 MiB, 4 in flight).
    assert!(build_peak < 160, "runner build peaked at {build_peak} MiB");
    assert!(
        get_peak < 160,
        "runner artifacts get peaked at {get_peak} MiB"
    );
    assert_eq!(server.unfinished_uploads(), Vec::<String>::new());
    world.assert_clean();
}

#[test]
fn ctrl_c_mid_upload_aborts_it_and_leaves_nothing_behind() {
    let server = Garage::start();
    let proj = project(&server.endpoint(), &big_script(200));
    let world = World::with_project(proj.path().to_owned());
    let (mut child, rx) = spawn_json(&world, &["build", "t", "--upload", "s3://bucket/x"]);
    wait_mid_upload(&rx);
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), Some(130));
    let finished: Vec<String> = rx
        .try_iter()
        .filter(|l| l.contains("\"event\":\"finished\""))
        .collect();
    assert!(
        finished.len() == 1
            && finished[0].contains("\"outcome\":\"cancelled\"")
            && finished[0].contains("\"phase\":\"publish\""),
        "{finished:?}"
    );
    server.assert_empty();
    world.assert_clean();
}

#[test]
fn losing_the_server_mid_upload_fails_clearly_and_gc_finishes_the_cleanup() {
    let server = Garage::start();
    let proj = project(&server.endpoint(), &big_script(200));
    let world = World::with_project(proj.path().to_owned());
    let (mut child, rx) = spawn_json(&world, &["build", "t", "--upload", "s3://bucket/x"]);
    wait_mid_upload(&rx);
    server.kill();
    // The SDK retries with backoff, then the cleanup tries too; then runner gives up.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(300)), Some(1));
    let finished = rx
        .try_iter()
        .find(|l| l.contains("\"event\":\"finished\""))
        .expect("a finished event");
    let v: serde_json::Value = serde_json::from_str(&finished).unwrap();
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["phase"], "publish");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("runner gc --force") && error.contains("s3://bucket/x/t/"),
        "{error}"
    );
    assert!(world.machine_dirs().is_empty(), "a machine was left");

    // The server comes back holding the unfinished upload; gc lists it, then removes it.
    server.restart();
    assert_ne!(
        server.unfinished_uploads(),
        Vec::<String>::new(),
        "nothing for gc to do?"
    );
    let dry = run_with(&world, SECRET, &["gc"]);
    assert!(
        stdout(&dry).contains("orphan  partial upload s3://bucket/x/t/"),
        "{}",
        stdout(&dry)
    );
    assert_ne!(
        server.unfinished_uploads(),
        Vec::<String>::new(),
        "the dry run removed it"
    );
    let forced = run_with(&world, SECRET, &["gc", "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert!(
        stdout(&forced).contains("removed partial upload"),
        "{}",
        stdout(&forced)
    );
    server.assert_empty();
    world.assert_clean();
}

#[test]
fn wrong_credentials_fail_before_any_machine_boots_and_leave_nothing() {
    let server = Garage::start();
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let wrong = "wrong-secret-0123456789";
    let out = run_with(&world, wrong, &["build", "t", "--upload", "s3://bucket/x"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(
        err.contains("cannot use bucket `s3://bucket/x`") && err.contains("access denied"),
        "{err}"
    );
    assert!(!world.machines().exists(), "a machine was started");
    assert!(
        !err.contains(SECRET) && !err.contains(wrong),
        "a secret leaked into output"
    );
    server.assert_empty();
    world.assert_clean();
}

#[test]
fn a_missing_bucket_is_named() {
    let server = Garage::start();
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let out = run_with(
        &world,
        SECRET,
        &["build", "t", "--upload", "s3://nosuchbucket/x"],
    );
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(
        err.contains("cannot use bucket `s3://nosuchbucket/x`"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(!world.machines().exists(), "a machine was started");
    world.assert_clean();
}

/// The premise of the tests above: this server really verifies what runner sends. A wrong
/// SHA-256 on an object or a part is refused and nothing is stored.
#[test]
fn the_test_server_rejects_wrong_checksums_and_signatures() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::ChecksumAlgorithm;
    let server = Garage::start();
    let c = server.client(SECRET);
    let wrong = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="; // sha256("test")
    let code = |e: &dyn aws_sdk_s3::error::ProvideErrorMetadata| e.code().unwrap_or("").to_owned();

    let put = server.block_on(
        c.put_object()
            .bucket(BUCKET)
            .key("obj")
            .checksum_sha256(wrong)
            .body(ByteStream::from_static(b"not test"))
            .send(),
    );
    let e = put.expect_err("a wrong object checksum was accepted");
    let e = e.into_service_error();
    assert!(
        ["BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"].contains(&code(&e).as_str()),
        "{e:?}"
    );

    let part = server.block_on(async {
        let id = c
            .create_multipart_upload()
            .bucket(BUCKET)
            .key("mp")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .unwrap()
            .upload_id()
            .unwrap()
            .to_owned();
        let r = c
            .upload_part()
            .bucket(BUCKET)
            .key("mp")
            .upload_id(&id)
            .part_number(1)
            .checksum_sha256(wrong)
            .body(ByteStream::from(vec![7u8; 5 << 20]))
            .send()
            .await;
        c.abort_multipart_upload()
            .bucket(BUCKET)
            .key("mp")
            .upload_id(&id)
            .send()
            .await
            .unwrap();
        r
    });
    let e = part
        .expect_err("a wrong part checksum was accepted")
        .into_service_error();
    assert!(
        ["BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"].contains(&code(&e).as_str()),
        "{e:?}"
    );

    let bad_sig = server.block_on(
        server
            .client("wrong-secret-0123456789")
            .put_object()
            .bucket(BUCKET)
            .key("obj")
            .body(ByteStream::from_static(b"x"))
            .send(),
    );
    let status = bad_sig
        .expect_err("a bad signature was accepted")
        .raw_response()
        .map(|r| r.status().as_u16());
    assert_eq!(status, Some(403));
    server.assert_empty();
}
