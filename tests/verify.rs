//! `runner verify` on builds made without a machine, against what a hostile directory can
//! hold: links in place of artifacts or records, envelopes with a bogus first signature or
//! another payload type, a reproduction statement moved beside other files, and an artifact
//! too large to hash before a SIGTERM — which must stop it.

mod common;
#[path = "common/published.rs"]
mod published;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::*;
use published::{Fixture, key};
use serde_json::Value;

const FILES: &[(&str, &[u8])] = &[("out.txt", b"built\n"), ("lib/a.bin", b"\x00\x01\x02")];

fn fixture() -> Fixture<'static> {
    Fixture {
        target: "t",
        files: FILES,
        started: 1_000,
        context: "c",
    }
}

/// A signed build in `<tmp>/t`, and the hex public key file that verifies it.
fn signed_build() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    fixture().write_dir(&dir, Some(&key(1)));
    let pubkey = tmp.path().join("key.pub");
    std::fs::write(&pubkey, key(1).public().hex()).unwrap();
    (tmp, dir, pubkey)
}

fn verify(world: &World, what: &Path, key: &Path) -> std::process::Output {
    world.run(&[
        "verify",
        what.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
}

#[test]
fn symlinked_artifacts_and_manifests_are_refused() {
    let (tmp, dir, pubkey) = signed_build();
    let world = World::new();
    assert_eq!(verify(&world, &dir, &pubkey).status.code(), Some(0));

    // The same bytes outside the directory, reached through a link: refused all the same.
    let outside = tmp.path().join("outside.txt");
    std::fs::rename(dir.join("out.txt"), &outside).unwrap();
    for target in [outside.as_path(), Path::new("/dev/zero")] {
        std::os::unix::fs::symlink(target, dir.join("out.txt")).unwrap();
        let out = verify(&world, &dir, &pubkey);
        assert_eq!(out.status.code(), Some(1), "a link to {target:?} verified");
        let text = stdout(&out);
        assert!(
            text.contains("FAILED  artifact out.txt") && text.contains("symbolic link"),
            "{text}"
        );
        std::fs::remove_file(dir.join("out.txt")).unwrap();
    }
    // A directory on the way that is a link is refused as well.
    std::fs::rename(&outside, dir.join("out.txt")).unwrap();
    let lib = tmp.path().join("lib-elsewhere");
    std::fs::rename(dir.join("lib"), &lib).unwrap();
    std::os::unix::fs::symlink(&lib, dir.join("lib")).unwrap();
    let out = verify(&world, &dir, &pubkey);
    assert!(stdout(&out).contains("FAILED  artifact lib/a.bin"));
    std::fs::remove_file(dir.join("lib")).unwrap();
    std::fs::rename(&lib, dir.join("lib")).unwrap();
    assert_eq!(verify(&world, &dir, &pubkey).status.code(), Some(0));

    // The manifest itself as a link: not read at all.
    let moved = tmp.path().join("manifest.json");
    std::fs::rename(dir.join("manifest.json"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, dir.join("manifest.json")).unwrap();
    let out = verify(&world, &dir, &pubkey);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
}

/// Rewrites the build's envelope with `f`.
fn edit_envelope(dir: &Path, f: impl FnOnce(&mut Value)) {
    let path = dir.join("provenance.intoto.jsonl");
    let mut env: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut env);
    std::fs::write(&path, env.to_string()).unwrap();
}

#[test]
fn a_bogus_first_signature_does_not_hide_a_good_one_but_another_payload_type_fails() {
    let (_tmp, dir, pubkey) = signed_build();
    let world = World::new();
    edit_envelope(&dir, |env| {
        let good = env["signatures"][0].clone();
        let mut bogus = good.clone();
        bogus["sig"] = base64::engine::general_purpose::STANDARD
            .encode([7u8; 64])
            .into();
        env["signatures"] = Value::Array(vec![bogus, good]);
    });
    let out = verify(&world, &dir, &pubkey);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Signed properly, but over another payload type: refused for its type.
    let other = "application/json";
    edit_envelope(&dir, |env| {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let pae = runner::provenance::dsse::pae(other, &payload);
        env["payloadType"] = other.into();
        env["signatures"][1]["sig"] = base64::engine::general_purpose::STANDARD
            .encode(key(1).sign(&pae))
            .into();
    });
    let out = verify(&world, &dir, &pubkey);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  signature: the envelope's payloadType is"),
        "{}",
        stdout(&out)
    );
}

/// A signed reproduction statement about `fixture()`'s artifacts, all identical, in `dir`,
/// with the rebuilt files where `runner reproduce` leaves them.
fn reproduction(dir: &Path, files: &[(&str, &[u8])]) {
    let m = fixture().manifest(|_, p| format!("file:///published/t/{p}"));
    let statement = runner::provenance::Statement {
        type_: runner::provenance::STATEMENT_TYPE.into(),
        subject: m
            .artifacts
            .iter()
            .map(|a| runner::provenance::Subject::sha256(&a.path, &a.sha256))
            .collect(),
        predicate_type: runner::provenance::REPRODUCTION.into(),
        predicate: serde_json::json!({
            "original": {"target": "t"},
            "verdicts": m.artifacts.iter()
                .map(|a| serde_json::json!({"path": a.path, "result": {"verdict": "identical"}}))
                .collect::<Vec<_>>(),
        }),
    };
    let payload = serde_json::to_vec(&statement).unwrap();
    let env = runner::provenance::dsse::Envelope::new(&payload, Some(&key(1)));
    std::fs::create_dir_all(dir.join("artifacts/t/lib")).unwrap();
    std::fs::write(dir.join("reproduction.intoto.jsonl"), env.to_line()).unwrap();
    for (p, bytes) in files {
        std::fs::write(dir.join("artifacts/t").join(p), bytes).unwrap();
    }
}

#[test]
fn a_reproduction_statement_is_checked_against_the_files_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pubkey = tmp.path().join("key.pub");
    std::fs::write(&pubkey, key(1).public().hex()).unwrap();
    let world = World::new();
    let here = tmp.path().join("here");
    reproduction(&here, FILES);
    let out = verify(&world, &here, &pubkey);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok      file out.txt"));

    // The same statement beside other files: it says nothing about them.
    let foreign: &[(&str, &[u8])] = &[("out.txt", b"other\n"), ("lib/a.bin", b"\x00\x01\x02")];
    let there = tmp.path().join("there");
    reproduction(&there, foreign);
    std::fs::copy(
        here.join("reproduction.intoto.jsonl"),
        there.join("reproduction.intoto.jsonl"),
    )
    .unwrap();
    let out = verify(&world, &there, &pubkey);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  file out.txt"),
        "{}",
        stdout(&out)
    );
    // … and beside no files at all.
    std::fs::remove_dir_all(there.join("artifacts")).unwrap();
    let out = verify(&world, &there, &pubkey);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  file lib/a.bin"),
        "{}",
        stdout(&out)
    );
}

/// Bytes the process has read so far (`rchar` of /proc/<pid>/io).
fn read_so_far(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn sigterm_stops_hashing_a_huge_artifact() {
    // A sparse 1 TiB artifact: hashing it whole would take many minutes here.
    let huge: u64 = 1 << 40;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    fixture().write_dir(&dir, Some(&key(1)));
    let m_path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&m_path).unwrap()).unwrap();
    m["artifacts"][0]["size"] = huge.into();
    std::fs::write(&m_path, serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::File::create(dir.join("out.txt"))
        .unwrap()
        .set_len(huge)
        .unwrap();
    let pubkey = tmp.path().join("key.pub");
    std::fs::write(&pubkey, key(1).public().hex()).unwrap();
    let world = World::new();
    let mut child = world.spawn(&[
        "verify",
        dir.to_str().unwrap(),
        "--key",
        pubkey.to_str().unwrap(),
    ]);
    // Hashing is under way once it has read far more than the records.
    while read_so_far(child.id()) < 64 << 20 {
        assert!(child.try_wait().unwrap().is_none(), "verify ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGTERM);
    // Not a measurement: a bound far above the second it may take, to fail instead of hang.
    let code = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(code, Some(128 + libc::SIGTERM));
}
