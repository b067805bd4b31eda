//! Signed provenance end to end on real QEMU builds: sign and verify, each tamper refused,
//! the envelope checked by an independent implementation (securesystemslib), `runner why`
//! for every kind of input change, and a reproduction on another builder at the recorded
//! machine size, whose signed verdicts `runner verify` checks.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const SCRIPT: &str = "#!/bin/sh\nset -e\ncat a.txt > \"$RUNNER_OUT/out.txt\"\necho \"$GREETING\" > \"$RUNNER_OUT/greeting.txt\"\n";

/// A signing project: builder `b` (bookworm-amd64's recipe), target `t`, a key `key.pem`.
fn signed_project() -> tempfile::TempDir {
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file(
            "builders/b.toml",
            &std::fs::read_to_string(repo().join("builders/bookworm-amd64.toml")).unwrap(),
        )
        .file("build.sh", SCRIPT)
        .file("src/a.txt", "a\n")
        .toml(
            "[signing]\nkey = \"key.pem\"\n\n[target.t]\nbuilder = \"b\"\nscript = \"build.sh\"\n\
             context = \"src\"\nenv = { GREETING = \"hi\" }\n",
        )
        .done();
    let world = World::with_project(p.path().to_owned());
    let out = world.run(&[
        "key",
        "generate",
        p.path().join("key.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    p
}

fn verify(world: &World, what: &Path, key: &Path) -> std::process::Output {
    world.run(&[
        "verify",
        what.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
}

/// Runs `f` on a file's bytes, checks verify refuses naming `what`, then restores the file.
fn tampered(
    world: &World,
    dir: &Path,
    key: &Path,
    file: &str,
    what: &str,
    f: impl Fn(&mut Vec<u8>),
) {
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    let mut bytes = original.clone();
    f(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let out = verify(world, dir, key);
    assert_eq!(out.status.code(), Some(1), "tampered {file} verified");
    let text = stdout(&out);
    assert!(text.contains(&format!("FAILED  {what}")), "{file}: {text}");
    std::fs::write(&path, original).unwrap();
}

#[test]
fn a_signed_build_verifies_and_every_tamper_or_wrong_key_fails_by_name() {
    let p = signed_project();
    let world = World::with_project(p.path().to_owned());
    assert!(world.run(&["build", "t"]).status.success());
    let dir = p.path().join("artifacts/t");
    let key = p.path().join("key.pub");
    let out = verify(&world, &dir, &key);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("verified: every check holds"));

    tampered(&world, &dir, &key, "out.txt", "artifact out.txt", |b| {
        b[0] ^= 1
    });
    tampered(&world, &dir, &key, "manifest.json", "manifest.json", |b| {
        *b = String::from_utf8_lossy(b)
            .replace("\"hi\"", "\"ho\"")
            .into_bytes()
    });
    tampered(&world, &dir, &key, "SHA256SUMS", "SHA256SUMS", |b| {
        b.push(b'\n')
    });
    tampered(
        &world,
        &dir,
        &key,
        "provenance.intoto.jsonl",
        "signature",
        |b| {
            let mut env: Value = serde_json::from_slice(b).unwrap();
            let sig = env["signatures"][0]["sig"].as_str().unwrap().to_owned();
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            env["signatures"][0]["sig"] = format!("{flipped}{}", &sig[1..]).into();
            *b = env.to_string().into_bytes();
        },
    );
    // Another key: refused, naming the key it wanted.
    let other = p.path().join("other.pem");
    assert!(
        world
            .run(&["key", "generate", other.to_str().unwrap()])
            .status
            .success()
    );
    let out = verify(&world, &dir, &other.with_extension("pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  signature: no signature by key"),
        "{}",
        stdout(&out)
    );

    // An independent implementation accepts the very envelope.
    let python = std::env::var("RUNNER_DSSE_PYTHON").unwrap_or_else(|_| "python3".into());
    let checked = std::process::Command::new(python)
        .arg(repo().join("tests/provenance/verify_dsse.py"))
        .arg(dir.join("provenance.intoto.jsonl"))
        .arg(std::fs::read_to_string(&key).unwrap().trim())
        .output()
        .expect("python with securesystemslib (scripts/test installs it)");
    eprintln!("{}{}", stdout(&checked), stderr(&checked));
    assert!(
        checked.status.success(),
        "securesystemslib refused the envelope"
    );

    // Without a key a build is published unsigned, says so, and does not verify.
    std::fs::remove_file(p.path().join("key.pem")).unwrap();
    let toml = std::fs::read_to_string(p.path().join("runner.toml")).unwrap();
    std::fs::write(
        p.path().join("runner.toml"),
        toml.replace("key = \"key.pem\"\n", ""),
    )
    .unwrap();
    assert!(world.run(&["build", "t", "--force"]).status.success());
    let log = std::fs::read_to_string(world.state.path().join("logs/builds/t.log")).unwrap();
    assert!(log.contains("provenance unsigned"), "{log}");
    let out = verify(&world, &dir, &key);
    assert!(stdout(&out).contains("not signed"), "{}", stdout(&out));
    world.assert_clean();
}

fn why(world: &World) -> String {
    let out = world.run(&["why", "t"]);
    assert!(out.status.success());
    stdout(&out)
}

#[test]
fn why_names_each_kind_of_input_change_and_a_hit() {
    let p = signed_project();
    let world = World::with_project(p.path().to_owned());
    assert!(world.run(&["build", "t"]).status.success());
    assert!(why(&world).contains("cache hit"), "{}", why(&world));

    let edit = |rel: &str, from: &str, to: &str| {
        let path = p.path().join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    std::fs::write(p.path().join("src/a.txt"), "changed\n").unwrap();
    std::fs::write(p.path().join("src/new.txt"), "new\n").unwrap();
    assert!(
        why(&world).contains("context: a.txt modified, new.txt added"),
        "{}",
        why(&world)
    );
    std::fs::write(p.path().join("src/a.txt"), "a\n").unwrap();
    std::fs::remove_file(p.path().join("src/new.txt")).unwrap();

    edit("runner.toml", "GREETING = \"hi\"", "GREETING = \"hello\"");
    assert!(
        why(&world).contains("env GREETING: hi → hello"),
        "{}",
        why(&world)
    );
    edit("runner.toml", "GREETING = \"hello\"", "GREETING = \"hi\"");

    edit("builders/b.toml", "packages = []", "packages = [\"make\"]");
    assert!(
        why(&world).contains("builder b: packages +make"),
        "{}",
        why(&world)
    );
    std::fs::copy(
        repo().join("builders/bookworm-amd64.toml"),
        p.path().join("builders/b.toml"),
    )
    .unwrap();

    edit("build.sh", "set -e", "set -eu");
    let text = why(&world);
    assert!(
        text.contains("script changed") && !text.contains("context"),
        "{text}"
    );
    edit("build.sh", "set -eu", "set -e");
    assert!(why(&world).contains("cache hit"));
    world.assert_clean();
}

#[test]
fn a_reproduction_on_another_builder_uses_the_recorded_size_and_signs_its_verdicts() {
    let (tmp, root) = example("hello-c");
    // The build runs at 2 vCPUs / 1536M; the other builder's own size is 1 vCPU / 1G.
    let toml = std::fs::read_to_string(root.join("runner.toml")).unwrap();
    let toml = toml.replacen(
        "timeout = \"20m\"",
        "timeout = \"20m\"\nmemory = \"1536M\"",
        1,
    );
    std::fs::write(
        root.join("runner.toml"),
        format!("[signing]\nkey = \"key.pem\"\n\n{toml}"),
    )
    .unwrap();
    let other: String = std::fs::read_to_string(root.join("builders/bookworm-gcc.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("vcpus") && !l.starts_with("memory"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + "vcpus = 1\nmemory = \"1G\"\n";
    std::fs::write(root.join("builders/other-gcc.toml"), other).unwrap();
    let world = World::with_project(root.clone());
    assert!(
        world
            .run(&["key", "generate", root.join("key.pem").to_str().unwrap()])
            .status
            .success()
    );
    assert!(world.run(&["build", "hello-bookworm"]).status.success());
    let recorded: Value = serde_json::from_slice(
        &std::fs::read(root.join("artifacts/hello-bookworm/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(recorded["machine"]["memory_mib"], 1536);

    let out_dir: PathBuf = tmp.path().join("repro");
    let manifest = root.join("artifacts/hello-bookworm/manifest.json");
    let out = world.run(&[
        "reproduce",
        manifest.to_str().unwrap(),
        "--context",
        root.join("src").to_str().unwrap(),
        "--on",
        "other-gcc",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rebuilt: Value = serde_json::from_slice(
        &std::fs::read(out_dir.join("artifacts/hello-bookworm/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rebuilt["builder"]["name"], "other-gcc");
    assert_eq!(
        rebuilt["machine"], recorded["machine"],
        "the recorded size, not the builder's"
    );

    let key = root.join("key.pub");
    let out = verify(&world, &out_dir, &key);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("ok      reproduced hello: identical"),
        "{}",
        stdout(&out)
    );
    world.assert_clean();
}
