//! Manifests, cache hits and `runner reproduce`, on real guests.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// A project with the repository's bookworm-amd64 builder, a context dir `src`, and a script.
fn project(script: &str, extra_target_lines: &str) -> tempfile::TempDir {
    Project::new()
        .repo_builder("bookworm-amd64")
        .file("src/input.txt", "hello\n")
        .file("build.sh", script)
        .toml(&format!("[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n{extra_target_lines}"))
        .done()
}

const STABLE: &str = "#!/bin/sh\nset -e\ntr a-z A-Z < input.txt > \"$RUNNER_OUT/upper.txt\"\necho \"epoch $SOURCE_DATE_EPOCH\" > \"$RUNNER_OUT/epoch.txt\"\n";

fn outcome(out: &std::process::Output, target: &str) -> (String, bool) {
    let events = json_events(out);
    let f = finished(&events, target);
    let booted = events
        .iter()
        .any(|e| e["event"] == "phase" && e["target"] == target && e["phase"] == "boot");
    (f["outcome"].as_str().unwrap().to_owned(), booted)
}

#[test]
fn a_reproducible_example_rebuilds_identically_and_reproduce_says_so() {
    let (tmp, root) = example("hello-c");
    let world = World::with_project(root.clone());
    assert!(world.run(&["build", "hello-bookworm"]).status.success());
    let dir = root.join("artifacts/hello-bookworm");
    let first = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let saved: PathBuf = tmp.path().join("first-manifest.json");
    std::fs::copy(dir.join("manifest.json"), &saved).unwrap();

    // A second build in a separate fresh VM gives the same bytes.
    assert!(
        world
            .run(&["build", "hello-bookworm", "--force"])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap(),
        first
    );

    let m: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(m["schema"], 2);
    for key in [
        "runner_version",
        "base_image_sha256",
        "context_digest",
        "inputs_digest",
        "started_unix",
    ] {
        assert!(!m[key].is_null(), "manifest lacks {key}");
    }
    assert_eq!(m["script"]["sha256"].as_str().unwrap().len(), 64);
    assert!(
        m["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["path"] == "hello" && a["uri"].as_str().unwrap().starts_with("file://"))
    );

    // As JSON (the human verdicts are checked by the next test).
    let out = world.run(&[
        "reproduce",
        saved.to_str().unwrap(),
        "--context",
        root.join("src").to_str().unwrap(),
        "--message-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["reproduced"], true, "{doc}");
    let verdicts: Vec<(&str, &str)> = doc["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap(),
                a["result"]["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(verdicts.contains(&("hello", "identical")), "{doc}");
    assert!(verdicts.contains(&("build-info.txt", "identical")), "{doc}");
    world.assert_clean();
}

#[test]
fn a_non_reproducible_build_is_reported_different_with_both_digests() {
    let proj = project(
        "#!/bin/sh\nset -e\ndate +%s%N > \"$RUNNER_OUT/stamp.txt\"\nhead -c 16 /dev/urandom > \"$RUNNER_OUT/random.bin\"\necho same > \"$RUNNER_OUT/same.txt\"\n",
        "",
    );
    let world = World::with_project(proj.path().to_owned());
    assert!(world.run(&["build", "t"]).status.success());
    let manifest = proj.path().join("artifacts/t/manifest.json");
    let out = world.run(&[
        "reproduce",
        manifest.to_str().unwrap(),
        "--context",
        proj.path().join("src").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let so = stdout(&out);
    assert!(
        so.contains("different  stamp.txt") && so.contains("different  random.bin"),
        "{so}"
    );
    assert!(so.contains("identical  same.txt"), "{so}");
    assert_eq!(so.matches("recorded sha256").count(), 2, "{so}");
    assert_eq!(so.matches("rebuilt  sha256").count(), 2, "{so}");
    assert!(so.contains("NOT reproduced"), "{so}");
    world.assert_clean();
}

#[test]
fn reproduce_refuses_another_context_and_an_unknown_schema() {
    let proj = project(STABLE, "");
    let world = World::with_project(proj.path().to_owned());
    assert!(world.run(&["build", "t"]).status.success());
    let manifest = proj.path().join("artifacts/t/manifest.json");
    std::fs::write(proj.path().join("src/input.txt"), "changed\n").unwrap();
    let out = world.run(&[
        "reproduce",
        manifest.to_str().unwrap(),
        "--context",
        proj.path().join("src").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("refusing to reproduce from different sources"),
        "{}",
        stderr(&out)
    );

    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["schema"] = 3.into();
    let future = proj.path().join("future.json");
    std::fs::write(&future, m.to_string()).unwrap();
    let out = world.run(&[
        "reproduce",
        future.to_str().unwrap(),
        "--context",
        proj.path().join("src").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("schema version 3"),
        "{}",
        stderr(&out)
    );
    world.assert_clean();
}

#[test]
fn unchanged_inputs_are_a_cache_hit_and_any_change_rebuilds() {
    let proj = project(STABLE, "env = { MODE = \"a\" }\n");
    let world = World::with_project(proj.path().to_owned());
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "t", "--message-format", "json"];
        args.extend_from_slice(extra);
        let out = world.run(&args);
        assert!(out.status.success());
        outcome(&out, "t")
    };
    assert_eq!(build(&[]), ("succeeded".into(), true));
    assert_eq!(
        build(&[]),
        ("cached".into(), false),
        "unchanged inputs must not boot a VM"
    );
    assert_eq!(build(&["--force"]), ("succeeded".into(), true));

    // Each input, changed alone, rebuilds; unchanged again, it is a hit.
    std::fs::write(proj.path().join("src/input.txt"), "other\n").unwrap();
    assert_eq!(build(&[]).0, "succeeded", "context change");
    std::fs::write(
        proj.path().join("build.sh"),
        format!("{STABLE}echo more > \"$RUNNER_OUT/more.txt\"\n"),
    )
    .unwrap();
    assert_eq!(build(&[]).0, "succeeded", "script change");
    let toml = std::fs::read_to_string(proj.path().join("runner.toml")).unwrap();
    std::fs::write(
        proj.path().join("runner.toml"),
        toml.replace("MODE = \"a\"", "MODE = \"b\""),
    )
    .unwrap();
    assert_eq!(build(&[]).0, "succeeded", "env change");
    let b = proj.path().join("builders/bookworm-amd64.toml");
    let text = std::fs::read_to_string(&b)
        .unwrap()
        .replace("disk = \"4G\"", "disk = \"5G\"");
    std::fs::write(&b, text).unwrap();
    assert_eq!(build(&[]).0, "succeeded", "builder change");
    assert_eq!(build(&[]).0, "cached");
    // A damaged published artifact is not a cache hit.
    std::fs::write(proj.path().join("artifacts/t/upper.txt"), "tampered").unwrap();
    assert_eq!(build(&[]).0, "succeeded", "tampered artifact");
    world.assert_clean();
}
