//! Publishing to a real S3-compatible server (s3s-fs, which checks SigV4 signatures), started
//! on loopback per test: uploads, cache hits from S3, multipart, bad credentials, no bucket.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "runnertestkey";
const SECRET: &str = "runnertestsecret";

/// An s3s-fs process serving a temp dir; killed on drop.
struct Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Server {
    fn start(buckets: &[&str]) -> Server {
        let bin = std::env::var_os("RUNNER_S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| "s3s-fs".into());
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                KEY,
                "--secret-key",
                SECRET,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (scripts/test installs it): {e}",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, port, root }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every stored object key under `bucket`, sorted (s3s-fs keeps objects as files).
    fn objects(&self, bucket: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut out = vec![];
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(&base)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.retain(|k| !k.starts_with('.'));
        out.sort();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn project(endpoint: &str, script: &str) -> tempfile::TempDir {
    let dir = project_with(&[(
        "bookworm-amd64",
        &std::fs::read_to_string(repo().join("builders/bookworm-amd64.toml")).unwrap(),
    )]);
    std::fs::write(dir.path().join("build.sh"), script).unwrap();
    std::fs::write(
        dir.path().join("runner.toml"),
        format!(
            "[store]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\n\
             [target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n"
        ),
    )
    .unwrap();
    dir
}

fn run_with(world: &World, secret: &str, args: &[&str]) -> std::process::Output {
    let out = world
        .cmd()
        .args(args)
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    eprintln!(
        "runner {args:?} -> {}\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

const SCRIPT: &str = "#!/bin/sh\nset -e\necho hello > \"$RUNNER_OUT/small.txt\"\nhead -c 20000000 /dev/urandom > \"$RUNNER_OUT/big.bin\"\n";

#[test]
fn upload_publishes_artifacts_then_manifest_and_a_rebuild_is_a_cache_hit() {
    let server = Server::start(&["bucket"]);
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let out = run_with(
        &world,
        SECRET,
        &[
            "build",
            "t",
            "--upload",
            "s3://bucket/releases",
            "--message-format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let objects = server.objects("bucket");
    let names: Vec<&str> = objects
        .iter()
        .map(|k| k.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{objects:?}");
    for n in ["SHA256SUMS", "big.bin", "manifest.json", "small.txt"] {
        assert!(names.contains(&n), "{n} missing: {objects:?}");
    }
    assert!(
        objects.iter().all(|k| k.starts_with("releases/t/")),
        "{objects:?}"
    );
    // The stored bytes are what the manifest says (the 20 MB file went up in parts).
    let key = objects
        .iter()
        .find(|k| k.ends_with("manifest.json"))
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.root.path().join("bucket").join(key)).unwrap(),
    )
    .unwrap();
    for a in manifest["artifacts"].as_array().unwrap() {
        let uri = a["uri"].as_str().unwrap();
        let k = uri.strip_prefix("s3://bucket/").unwrap();
        let bytes = std::fs::read(server.root.path().join("bucket").join(k)).unwrap();
        assert_eq!(bytes.len() as u64, a["size"].as_u64().unwrap());
        let digest = Command::new("sha256sum")
            .arg(server.root.path().join("bucket").join(k))
            .output()
            .unwrap();
        assert!(
            stdout(&digest).starts_with(a["sha256"].as_str().unwrap()),
            "{uri}"
        );
    }
    assert!(
        !proj.path().join("artifacts/t").exists(),
        "uploads must not also land locally"
    );

    let again = run_with(
        &world,
        SECRET,
        &[
            "build",
            "t",
            "--upload",
            "s3://bucket/releases",
            "--message-format",
            "json",
        ],
    );
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stdout(&again).contains("\"outcome\":\"cached\""),
        "{}",
        stdout(&again)
    );
    world.assert_clean();
}

#[test]
fn wrong_credentials_fail_before_any_machine_boots_and_leave_nothing() {
    let server = Server::start(&["bucket"]);
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let out = run_with(
        &world,
        "wrong-secret",
        &["build", "t", "--upload", "s3://bucket/x"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot use bucket `s3://bucket/x`") && err.contains("access denied"),
        "{err}"
    );
    assert!(!world.machines().exists(), "a machine was started");
    assert!(
        !err.contains(SECRET) && !err.contains("wrong-secret"),
        "a secret leaked into output"
    );
    assert_eq!(server.objects("bucket"), Vec::<String>::new());
    world.assert_clean();
}

#[test]
fn a_missing_bucket_is_named() {
    let server = Server::start(&[]);
    let proj = project(&server.endpoint(), SCRIPT);
    let world = World::with_project(proj.path().to_owned());
    let out = run_with(
        &world,
        SECRET,
        &["build", "t", "--upload", "s3://nosuchbucket/x"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot use bucket `s3://nosuchbucket/x`"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(!world.machines().exists(), "a machine was started");
    world.assert_clean();
}
