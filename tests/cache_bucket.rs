//! Build caches in a bucket (for machines that take no cache disk): the archive goes up and
//! down by presigned URL, the store accepts only the size and SHA-256 the host signed, the
//! pointer a bucket writer could plant is read typed and capped, and what a killed runner
//! left is journaled for `runner gc`.
//!
//! The first test is host-side (curl stands in for the guest); the second runs real guests.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

use garage::{BUCKET, Garage, KEY, SECRET};
use runner::manifest::Sha256;
use runner::store::ArtifactStore;
use runner::store::caches::Upload;
use runner::store::s3::{S3Store, S3Url, Settings};

/// Uploads `file` the way a guest does: curl with the presigned URL and its signed headers.
fn curl_put(up: &Upload, file: &Path) -> bool {
    let mut cmd = Command::new("curl");
    cmd.args(["-fsS", "-X", "PUT", "-T"]).arg(file);
    for (k, v) in &up.headers {
        if k.eq_ignore_ascii_case("content-length") {
            continue; // curl sends the file's own length
        }
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd.arg(&up.url).output().unwrap();
    eprintln!(
        "curl: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, Sha256) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    (p, Sha256::of(bytes))
}

#[test]
fn a_bucket_cache_takes_only_what_was_signed_and_refuses_a_planted_pointer() {
    let server = Garage::start();
    // SAFETY: the only test in this binary that reads these; set before any thread uses them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dirs = runner::paths::Dirs::resolve(
        Some(tmp.path().join("cache")),
        Some(tmp.path().join("state")),
    );
    let settings = Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
    };
    let url = S3Url {
        bucket: BUCKET.into(),
        prefix: "ci".into(),
    };
    let store = server.block_on(S3Store::connect(url, &settings, &dirs));
    let caches = store.caches().unwrap();
    let journal = || std::fs::read_dir(dirs.uploads()).map_or(0, |d| d.count());

    assert!(
        server
            .block_on(caches.newest("k-1", 1 << 20))
            .unwrap()
            .is_none()
    );
    let (archive, sum) = file_with(tmp.path(), "a", b"generation one");
    let (other, _) = file_with(tmp.path(), "b", b"generation 0ne");
    let r = caches.reserve("k-1", 1).unwrap();
    assert_eq!(journal(), 1, "reserved before any URL exists");
    let up = server.block_on(caches.upload_url(&r, 14, &sum)).unwrap();
    // Same length, other bytes: the store refuses them (the signed checksum).
    assert!(
        !curl_put(&up, &other),
        "the store took bytes that were not signed"
    );
    assert!(server.block_on(caches.check(&r, 14, &sum)).is_err());
    assert!(curl_put(&up, &archive));
    server.block_on(caches.check(&r, 14, &sum)).unwrap();
    // The machine's word on the size is checked too.
    assert!(server.block_on(caches.check(&r, 15, &sum)).is_err());
    server.block_on(caches.commit(&r, 14, &sum)).unwrap();
    assert_eq!(journal(), 0, "a committed archive stays out of gc's reach");
    let newest = server
        .block_on(caches.newest("k-1", 1 << 20))
        .unwrap()
        .unwrap();
    assert_eq!((newest.n, newest.bytes, &newest.sha256), (1, 14, &sum));
    let got = Command::new("curl")
        .args(["-fsS", &newest.url])
        .output()
        .unwrap();
    assert_eq!(got.stdout, b"generation one");
    // Over the reader's limit: refused before any download.
    assert!(server.block_on(caches.newest("k-1", 10)).is_err());

    // Generations 2 and 3 prune generation 1; an abandoned 4 leaves nothing.
    for n in 2..=3 {
        let r = caches.reserve("k-1", n).unwrap();
        let up = server.block_on(caches.upload_url(&r, 14, &sum)).unwrap();
        assert!(curl_put(&up, &archive));
        server.block_on(caches.commit(&r, 14, &sum)).unwrap();
    }
    let r = caches.reserve("k-1", 4).unwrap();
    let up = server.block_on(caches.upload_url(&r, 14, &sum)).unwrap();
    assert!(curl_put(&up, &archive));
    server.block_on(caches.abandon(&r)).unwrap();
    assert_eq!(journal(), 0);
    let keys: Vec<String> = server.objects().into_iter().map(|(k, _)| k).collect();
    let gens: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("ci/.runner/caches/k-1/g"))
        .map(|k| &k[..1])
        .collect();
    assert_eq!(gens, ["2", "3"], "{keys:?}");
    assert!(keys.contains(&"ci/.runner/caches/k-1/newest.json".to_owned()));

    // Someone with write access plants pointers: each one is refused by name, never followed.
    let planted = [
        r#"{"generation":1,"nonce":"../../../x","bytes":1,"sha256":"SUM"}"#.to_owned(),
        r#"{"generation":1,"nonce":"0123456789abcdef","bytes":1,"sha256":"SUM","url":"x"}"#
            .to_owned(),
        "[".repeat(100_000),
        "x".repeat(40 << 20),
    ];
    let c = server.client(SECRET);
    for body in planted {
        let body = body.replace("SUM", sum.as_str());
        server.block_on(async {
            c.put_object()
                .bucket(BUCKET)
                .key("ci/.runner/caches/k-1/newest.json")
                .body(body.into_bytes().into())
                .send()
                .await
                .unwrap()
        });
        let e = server
            .block_on(caches.newest("k-1", 1 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.contains("newest.json"), "{e}");
    }
}

/// Counts its builds in the cached `/var/cache/demo` and says so in its log; fails (exit 7)
/// after counting when the context holds `fail`.
const COUNTER: &str = "#!/bin/sh\nset -e\nmkdir -p /var/cache/demo\n\
    n=$(cat /var/cache/demo/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /var/cache/demo/n\n\
    echo \"seen $n\"; echo $n > \"$RUNNER_OUT/count.txt\"\n[ ! -e fail ] || exit 7\n";

/// A local machine told to carry its cache the way a remote one does (`fetch`), publishing
/// to the test server.
fn bucket_project(server: &Garage, script: &str, limits: &str) -> tempfile::TempDir {
    Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", script)
        .file("src/a.txt", "a\n")
        .toml(&format!(
            "{limits}[store]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n\n\
             [target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n\
             cache = [\"/var/cache/demo\"]\ncache_transfer = \"fetch\"\n",
            server.endpoint()
        ))
        .done()
}

fn creds(mut cmd: Command) -> Command {
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// The cache objects in the bucket: the pointer's bytes and each generation's directory.
fn cache_objects(server: &Garage) -> (Option<Vec<u8>>, Vec<String>) {
    let keys: Vec<String> = server
        .objects()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/.runner/caches/"))
        .collect();
    let pointer = keys.iter().find(|k| k.ends_with("/newest.json"));
    let gens = keys
        .iter()
        .filter(|k| k.ends_with("/cache.tar.zst"))
        .map(|k| k.rsplit('/').nth(1).unwrap().to_owned())
        .collect();
    (pointer.map(|k| server.get(k)), gens)
}

#[test]
fn a_cache_travels_through_the_bucket_and_a_failed_build_or_a_bad_archive_changes_nothing() {
    let server = Garage::start();
    let p = bucket_project(&server, COUNTER, "");
    let world = World::with_project(p.path().to_owned());
    let log = || std::fs::read_to_string(world.state.path().join("logs/builds/t.log")).unwrap();
    let build = |force: bool| {
        let mut args = vec!["build", "t", "--upload", "s3://bucket/ci"];
        if force {
            args.push("--force");
        }
        run_shown(creds(world.cmd()), &args)
    };
    assert!(build(false).status.success());
    let first = log();
    assert!(
        first.contains("has no generation in the bucket yet"),
        "{first}"
    );
    assert!(first.contains("seen 1"), "{first}");
    let (pointer, gens) = cache_objects(&server);
    assert!(pointer.is_some() && gens.len() == 1, "{gens:?}");
    // The manifest's byproduct is the archive the bucket holds, byte for byte.
    let archive = server.key_ending("/cache.tar.zst");
    let manifest_key = server.key_ending("/manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&server.get(&manifest_key)).unwrap();
    let sum = Sha256::of(&server.get(&archive));
    assert_eq!(
        manifest["cache"]["saved_sha256"],
        sum.as_str(),
        "{manifest}"
    );
    assert_eq!(manifest["cache"]["generation"], 0);

    assert!(build(true).status.success());
    assert!(log().contains("seen 2"), "{}", log());
    let (pointer_2, _) = cache_objects(&server);

    // A failed build counts, then fails: the bucket's newest stays, and nothing it uploaded.
    std::fs::write(p.path().join("src/fail"), "").unwrap();
    let out = build(false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(log().contains("seen 3"), "{}", log());
    let (pointer_3, gens) = cache_objects(&server);
    assert_eq!(pointer_3, pointer_2, "a failed build moved the pointer");
    assert_eq!(gens.len(), 2, "{gens:?}");
    std::fs::remove_file(p.path().join("src/fail")).unwrap();
    assert!(build(true).status.success());
    assert!(log().contains("seen 3"), "{}", log());

    // A pointer naming an archive that is not there (or not what it says): the machine
    // starts empty, and the manifest says it read nothing.
    let (pointer, _) = cache_objects(&server);
    let mut forged: serde_json::Value = serde_json::from_slice(&pointer.unwrap()).unwrap();
    forged["nonce"] = "0123456789abcdef".into();
    let forged = forged.to_string();
    let key = server.key_ending("/newest.json");
    let c = server.client(SECRET);
    server.block_on(async {
        c.put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(forged.into_bytes().into())
            .send()
            .await
            .unwrap()
    });
    assert!(build(true).status.success());
    let last = log();
    assert!(last.contains("could not be used; starting empty"), "{last}");
    assert!(last.contains("seen 1"), "{last}");
    // Numbered after what the pointer named (3), so pruning never spares an older one.
    let (pointer, _) = cache_objects(&server);
    let pointer: serde_json::Value = serde_json::from_slice(&pointer.unwrap()).unwrap();
    assert_eq!(pointer["generation"], 4, "{pointer}");
    assert_eq!(
        world.upload_records(),
        Vec::<String>::new(),
        "an upload record outlived its run"
    );
    world.assert_clean();
}

/// Fills the cache with 24 MiB that does not compress, and publishes 96 MiB: the archive is
/// in the bucket for a while before the build is published and the cache committed.
const BIG: &str = "#!/bin/sh\nset -e\nmkdir -p /var/cache/demo\n\
    head -c 25165824 /dev/urandom > /var/cache/demo/blob\n\
    head -c 100663296 /dev/urandom > \"$RUNNER_OUT/big.bin\"\n";

#[test]
fn a_killed_runs_uncommitted_cache_archive_is_journaled_and_gc_removes_it() {
    let server = Garage::start();
    let p = bucket_project(&server, BIG, "");
    let world = World::with_project(p.path().to_owned());
    let mut child = creds(world.cmd())
        .args(["build", "t", "--upload", "s3://bucket/ci"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    while cache_objects(&server).1.is_empty() {
        assert!(Instant::now() < deadline, "no cache archive was uploaded");
        assert!(child.try_wait().unwrap().is_none(), "the build ended first");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let (pointer, gens) = cache_objects(&server);
    assert!(
        pointer.is_none(),
        "committed before the build was published"
    );
    assert_eq!(gens.len(), 1);
    world.gc_after_a_kill("ci/.runner/caches/", creds(world.cmd()));
    server.assert_empty();
    world.assert_clean();
}

#[test]
fn an_oversized_archive_is_refused_before_any_upload() {
    let server = Garage::start();
    let p = bucket_project(&server, BIG, "[limits]\nmax_cache_size = \"16M\"\n\n");
    let world = World::with_project(p.path().to_owned());
    let out = run_shown(
        creds(world.cmd()),
        &["build", "t", "--upload", "s3://bucket/ci"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("failed in cache"), "{}", stderr(&out));
    let log = std::fs::read_to_string(world.state.path().join("logs/builds/t.log")).unwrap();
    assert!(log.contains("over max_cache_size 16M"), "{log}");
    server.assert_empty();
    world.assert_clean();
}
