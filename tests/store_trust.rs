//! A store is someone else's disk: builds planted in it — newer by name, unsigned, or a real
//! signed build replayed under a newer id — must not become cache hits or "the newest build"
//! once a verifying key is configured, and `verify` must hash the manifest it parsed, not one put
//! in its place. On a real S3 server (Garage) and the local store.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/published.rs"]
mod published;

use common::*;
use garage::{BUCKET, Garage, KEY, SECRET};
use published::{Fixture, key};
use runner::manifest::Manifest;
use runner::provenance::keys::SigningKey;
use runner::store::s3::{S3Store, S3Url, Settings};
use runner::store::{ArtifactStore, Trust};

const FILES: &[(&str, &[u8])] = &[("out.txt", b"built\n")];

fn fixture(started: u64, context: &'static str) -> Fixture<'static> {
    Fixture {
        target: "t",
        files: FILES,
        started,
        context,
    }
}

/// Puts a build in the bucket under `releases/t/<id>/` (`id`: its own unless given; a build
/// replayed under another id keeps the records, and so the URIs, of its own).
fn upload(server: &Garage, f: &Fixture, signer: Option<&SigningKey>, id: Option<&str>) -> Manifest {
    let own = f.id();
    let prefix = format!("releases/t/{}/", id.unwrap_or(&own));
    let uri = |own: &str, p: &str| format!("s3://{BUCKET}/releases/t/{own}/{p}");
    let (m, records) = f.records(uri, signer);
    let c = server.client(SECRET);
    let mut objects: Vec<(String, Vec<u8>)> = f
        .files
        .iter()
        .map(|(p, b)| (format!("{prefix}{p}"), b.to_vec()))
        .collect();
    objects.extend(
        records
            .named()
            .iter()
            .map(|(n, b)| (format!("{prefix}{n}"), b.to_vec())),
    );
    server.block_on(async {
        for (k, body) in objects {
            c.put_object()
                .bucket(BUCKET)
                .key(k)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    });
    m
}

/// Garage, with its credentials in this process's environment (for the store's SDK client).
/// The first thing each test here calls, before any other thread exists.
fn garage() -> Garage {
    // SAFETY: called first in a test process, while it has a single thread.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    Garage::start()
}

fn store(server: &Garage, state: &std::path::Path, trust: Trust) -> S3Store {
    let dirs = runner::paths::Dirs::resolve(None, Some(state.to_owned()));
    let settings = Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
    };
    let url: S3Url = "s3://bucket/releases".parse().unwrap();
    server
        .block_on(S3Store::connect(url, &settings, &dirs))
        .trusting(trust)
}

#[test]
fn planted_builds_in_s3_are_ignored_once_a_key_is_configured() {
    let server = garage();
    let signer = key(1);
    let real = upload(&server, &fixture(1_000, "real"), Some(&signer), None);
    // Newer by name and by its own record, but unsigned.
    let planted = upload(&server, &fixture(99_999_999_999, "planted"), None, None);
    // A real signed build replayed under a newer id than its own.
    let old = fixture(500, "old");
    let replayed = upload(
        &server,
        &old,
        Some(&signer),
        Some("0123456789abcdef-99999999998"),
    );
    let state = tempfile::tempdir().unwrap();

    let trusting = store(&server, state.path(), Trust(Some(signer.public())));
    let latest = server.block_on(trusting.latest("t")).unwrap().unwrap();
    assert_eq!(
        latest.started_unix, real.started_unix,
        "not the signed build"
    );
    let hit = server.block_on(trusting.published("t", &real.inputs_digest));
    assert!(hit.unwrap().is_some(), "the signed build is a cache hit");
    for m in [&planted, &replayed] {
        let hit = server.block_on(trusting.published("t", &m.inputs_digest));
        assert!(hit.unwrap().is_none(), "a planted build became a cache hit");
    }

    // Without a key the unsigned one counts (as before signing), the replay still does not.
    let open = store(&server, state.path(), Trust::default());
    let latest = server.block_on(open.latest("t")).unwrap().unwrap();
    assert_eq!(latest.started_unix, planted.started_unix);
    let hit = server.block_on(open.published("t", &replayed.inputs_digest));
    assert!(hit.unwrap().is_none(), "a build under another id was used");

    // The CLI finds the key in runner.toml: `artifacts ls` shows the signed build.
    let (_p, world) = project(&server, &signer);
    let mut cmd = world.cmd();
    cmd.env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    let args = [
        "artifacts",
        "ls",
        "t",
        "--upload",
        "s3://bucket/releases",
        "--message-format",
        "json",
    ];
    let out = run_shown(cmd, &args);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = runner::manifest::build_id(&real.inputs_digest, real.started_unix);
    assert_eq!(doc["build"], id.as_str(), "{doc}");
}

#[test]
fn an_unsigned_local_build_is_no_cache_hit_once_a_key_is_configured() {
    let root = tempfile::tempdir().unwrap();
    let signer = key(1);
    let f = fixture(1_000, "real");
    let unsigned = f.write_dir(&root.path().join("t"), None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let trusting =
        runner::store::local::LocalStore::new(root.path()).trusting(Trust(Some(signer.public())));
    let open = runner::store::local::LocalStore::new(root.path());
    let hit = |s: &runner::store::local::LocalStore| {
        rt.block_on(s.published("t", &unsigned.inputs_digest))
            .unwrap()
            .is_some()
    };
    assert!(hit(&open), "without a key the build is a hit");
    assert!(!hit(&trusting), "an unsigned build was a hit");
    assert!(rt.block_on(trusting.latest("t")).unwrap().is_none());
    // Signed, it counts; then an artifact replaced by a link to the same bytes does not.
    f.write_dir(&root.path().join("t"), Some(&signer));
    assert!(hit(&trusting), "the signed build is a hit");
    let out = root.path().join("t/out.txt");
    let outside = root.path().join("outside.txt");
    std::fs::rename(&out, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &out).unwrap();
    assert!(!hit(&trusting), "a linked artifact was a hit");
}

/// A project whose store is `server` and whose verifying key is `signer`'s.
fn project(server: &Garage, signer: &SigningKey) -> (tempfile::TempDir, World) {
    let p = Project::new()
        .toml(&format!(
            "[signing]\npublic_key = \"{}\"\n\n[store]\nendpoint = \"{}\"\nregion = \
             \"us-east-1\"\npath_style = true\n\n[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \
             \"build.sh\"\n",
            signer.public().hex(),
            server.endpoint()
        ))
        .repo_builder("bookworm-amd64")
        .file("build.sh", "#!/bin/sh\n")
        .done();
    let world = World::with_project(p.path().to_owned());
    (p, world)
}

#[test]
fn verify_hashes_the_manifest_it_parsed_not_one_put_there_later() {
    let server = garage();
    let signer = key(1);
    let f = fixture(1_000, "real");
    upload(&server, &f, Some(&signer), None);
    let (_p, world) = project(&server, &signer);
    let what = format!("s3://{BUCKET}/releases/t/{}", f.id());
    let verify = || {
        let mut cmd = world.cmd();
        cmd.env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .args(["verify", what.as_str()]);
        cmd.output().unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // The manifest replaced after it was signed, with the artifact it names (a well-formed
    // manifest of this very build id, naming other bytes).
    let prefix = format!("releases/t/{}", f.id());
    let uri = |_: &str, p: &str| format!("s3://{BUCKET}/{prefix}/{p}");
    let mut other: serde_json::Value = serde_json::from_slice(&f.manifest(uri).to_json()).unwrap();
    let evil = b"evil\n";
    other["artifacts"][0]["sha256"] = runner::digest::sha256_hex(evil).into();
    other["artifacts"][0]["size"] = evil.len().into();
    for (key, body) in [
        ("manifest.json", serde_json::to_vec(&other).unwrap()),
        ("out.txt", evil.to_vec()),
    ] {
        server
            .block_on(
                server
                    .client(SECRET)
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("{prefix}/{key}"))
                    .body(body.into())
                    .send(),
            )
            .unwrap();
    }
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAILED  manifest.json: sha256"),
        "{}",
        stdout(&out)
    );
}
