//! The command line as cargo users expect it: `runner init` then `runner build`, the project
//! found from a subdirectory, completions and a man page, JSON output with its schema
//! version, distinct exit codes, and one clear line when AWS has no region.

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn out_of(mut cmd: std::process::Command, args: &[&str]) -> Output {
    let out = cmd.args(args).output().unwrap();
    eprintln!(
        "runner {args:?} -> {}\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Every stdout line of a JSON command: parsed, and carrying the schema version.
fn json_lines(out: &Output) -> Vec<Value> {
    let docs = json_events(out);
    assert!(!docs.is_empty(), "no JSON output");
    for d in &docs {
        assert_eq!(d["schema"], 1, "{d}");
    }
    docs
}

#[test]
fn init_makes_a_project_that_builds_as_it_is_found_from_a_subdirectory() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::with_project(dir.path().to_owned());
    let out = out_of(world.cmd_in(dir.path()), &["init"]);
    assert!(out.status.success());
    assert_eq!(
        out_of(world.cmd_in(dir.path()), &["init"]).status.code(),
        Some(4)
    );

    // Found from below, as Cargo.toml is.
    let sub = dir.path().join("src");
    let out = out_of(world.cmd_in(&sub), &["list", "--message-format", "json"]);
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["targets"][0]["name"], "hello", "{doc}");

    let out = out_of(world.cmd_in(&sub), &["build"]);
    assert!(out.status.success());
    let built = std::fs::read_to_string(dir.path().join("artifacts/hello/hello.txt")).unwrap();
    assert_eq!(built, "hello from a fresh VM, built on x86_64 by hello\n");

    // The JSON of the read-only commands, each with its schema version.
    let check = out_of(world.cmd_in(&sub), &["check", "--message-format", "json"]);
    assert_eq!(json_lines(&check)[0]["targets"], 1);
    let images = out_of(
        world.cmd_in(&sub),
        &["image", "list", "--message-format", "json"],
    );
    assert!(json_lines(&images)[0]["images"].as_array().is_some());
    let gc = out_of(world.cmd_in(&sub), &["gc", "--message-format", "json"]);
    assert_eq!(json_lines(&gc)[0]["dry_run"], true);
    let ls = out_of(
        world.cmd_in(&sub),
        &["artifacts", "ls", "hello", "--message-format", "json"],
    );
    let ls = &json_lines(&ls)[0];
    assert_eq!(ls["manifest"]["artifacts"][0]["path"], "hello.txt", "{ls}");
    // Quiet: a successful build prints nothing.
    let quiet = out_of(world.cmd_in(&sub), &["build", "-q"]);
    assert!(quiet.status.success());
    assert!(
        stdout(&quiet).is_empty() && stderr(&quiet).is_empty(),
        "-q printed"
    );
    world.assert_clean();
}

#[test]
fn completions_and_a_man_page_come_from_the_definitions() {
    let world = World::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = world.run(&["completions", shell]);
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(
            text.contains("runner") && text.contains("reproduce"),
            "{shell}"
        );
    }
    let man = world.run(&["man"]);
    assert!(man.status.success());
    assert!(stdout(&man).starts_with(".ie") || stdout(&man).contains(".TH runner"));
}

#[test]
fn exit_codes_tell_usage_configuration_failure_and_other_errors_apart() {
    let world = World::new();
    assert_eq!(
        world.run(&["build", "--no-such-flag"]).status.code(),
        Some(2)
    );

    let bad = Project::new()
        .toml("[target.t]\nbuilder = \"nope\"\nscript = \"x\"\n")
        .done();
    let w = World::with_project(bad.path().to_owned());
    let out = w.run(&["check"]);
    assert_eq!(out.status.code(), Some(3), "a configuration error");
    assert!(stderr(&out).contains("runner.toml:2:"), "{}", stderr(&out));

    let fails = Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", "#!/bin/sh\nexit 7\n")
        .toml(
            "[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n",
        )
        .file("src/.keep", "")
        .done();
    let w = World::with_project(fails.path().to_owned());
    assert_eq!(w.run(&["build"]).status.code(), Some(1), "a failed build");
    let out = w.run(&["artifacts", "ls", "t", "--upload", "not-a-url"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a flag that does not parse is usage"
    );
    let out = w.run(&["artifacts", "ls", "no-such-target"]);
    assert_eq!(out.status.code(), Some(4), "another error");
    assert!(
        stderr(&out).contains("no target `no-such-target` in runner.toml (targets: t)"),
        "{}",
        stderr(&out)
    );
    w.assert_clean();
}

/// Credentials but no region: one line saying how to set it, and none of the SDK's dumps or
/// warnings (the instance-metadata lookup it tries is pointed at a closed loopback port).
#[test]
fn a_missing_aws_region_is_one_clear_line() {
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", "#!/bin/sh\n")
        .toml("[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n")
        .done();
    let world = World::with_project(p.path().to_owned());
    let mut cmd = world.cmd();
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/");
    let out = out_of(cmd, &["build", "--upload", "s3://bucket/x"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("no AWS region for `s3://bucket/x`"), "{err}");
    assert!(err.contains("AWS_REGION"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!world.machines().exists());
}
