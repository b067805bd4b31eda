//! The EC2 backend against a local EC2-compatible endpoint (moto server, on loopback): what
//! a launch asks of EC2 (tags, user data with both keys and the dead-man switch, shutdown
//! behavior, a temporary security group), and that every way a run can end — failure,
//! timeout, Ctrl-C, SIGTERM, SIGKILL + `runner gc` — leaves no instance and no group.
//! moto has no real machines: SSH to an instance is refused (its address is on loopback),
//! which is exactly a boot that never becomes reachable.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/moto.rs"]
mod moto;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use moto::{InstanceInfo, Moto};

fn project(
    moto: &Moto,
    builder_extra: &str,
    targets: &[&str],
    target_extra: &str,
) -> tempfile::TempDir {
    let toml: String = targets
        .iter()
        .map(|t| {
            format!("[target.{t}]\nbuilder = \"cloud\"\nscript = \"build.sh\"\n{target_extra}\n")
        })
        .collect();
    Project::new()
        .builder("cloud", &moto.builder(builder_extra))
        .file("build.sh", "#!/bin/sh\ntrue\n")
        .toml(&toml)
        .done()
}

fn cmd(world: &World, moto: &Moto) -> Command {
    let mut c = world.cmd();
    moto.env(&mut c);
    c
}

fn run(world: &World, moto: &Moto, args: &[&str]) -> std::process::Output {
    run_shown(cmd(world, moto), args)
}

fn spawn(world: &World, moto: &Moto, args: &[&str]) -> Child {
    cmd(world, moto)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `n` instances tagged by runner are live; returns them.
fn wait_live(moto: &Moto, n: usize) -> Vec<InstanceInfo> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live: Vec<_> = moto
            .live_instances()
            .into_iter()
            .filter(|i| i.tags.contains_key("runner:run-id"))
            .collect();
        if live.len() >= n {
            return live;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} instances came up",
            live.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nothing of runner's is left: no live instance it tagged, no group it made.
fn assert_nothing_left(moto: &Moto) {
    let live: Vec<_> = moto
        .live_instances()
        .into_iter()
        .filter(|i| i.tags.contains_key("runner:run-id"))
        .collect();
    assert!(live.is_empty(), "instances left running: {live:?}");
    assert_eq!(
        moto.runner_groups(),
        Vec::<String>::new(),
        "security groups left"
    );
}

/// The checks on one launched instance: tags, shutdown behavior, user data, its group.
fn check_launch(moto: &Moto, i: &InstanceInfo, target: &str, runner_pid: u32) {
    let tag = |k: &str| i.tags.get(k).cloned().unwrap_or_default();
    assert_eq!(tag("runner:target"), target);
    let run = tag("runner:run-id");
    assert!(run.contains(&format!(":{runner_pid}:")), "run id {run}");
    assert!(tag("runner:owner").contains('@'));
    assert!(!tag("runner:machine").is_empty());
    let expires: u64 = tag("runner:expires").parse().unwrap();
    let now = now_unix();
    assert!(
        expires > now + 7000 && expires <= now + 7200,
        "expiry {expires} is not about 2h from now ({now})"
    );
    assert_eq!(moto.shutdown_behavior(&i.id), "terminate");

    let ud = moto.user_data(&i.id);
    assert!(ud.starts_with("#cloud-config\n"), "{ud}");
    // The client key to accept, the host key to present (a private key whose public half is
    // the one given), the image's own host keys deleted, and the switch set to the expiry.
    assert!(
        ud.contains("ssh_authorized_keys:\n  - ssh-ed25519 "),
        "{ud}"
    );
    assert!(ud.contains("ssh_deletekeys: true") && ud.contains("ssh_genkeytypes: [ed25519]"));
    let private: String = ud
        .split("ed25519_private: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let key = russh::keys::PrivateKey::from_openssh(&private).expect("a valid host key");
    let public = ud
        .lines()
        .find_map(|l| l.trim().strip_prefix("ed25519_public: "))
        .unwrap();
    assert_eq!(key.public_key().to_openssh().unwrap(), public);
    assert!(
        ud.contains(&format!("left=$(( {expires} - $(date +%s) ))")) && ud.contains("poweroff -f"),
        "dead-man switch missing or not at the expiry: {ud}"
    );

    // A temporary group that lets SSH in from `ssh_cidr` only.
    assert_eq!(i.groups.len(), 1, "{i:?}");
    assert!(moto.runner_groups().contains(&i.groups[0]));
    assert_eq!(moto.ingress(&i.groups[0]), ["tcp:22-22:127.0.0.1/32"]);
}

const SLOW_BOOT: &str =
    "instance_types = [\"t3.micro\"]\nboot_timeout = \"10m\"\nmax_lifetime = \"2h\"\n";

#[test]
fn a_launch_carries_tags_keys_and_dead_man_switch_and_ctrl_c_terminates_it() {
    let moto = Moto::start(&[]);
    let proj = project(&moto, SLOW_BOOT, &["t"], "");
    let world = World::with_project(proj.path().to_owned());
    let mut child = spawn(&world, &moto, &["build", "t"]);
    let live = wait_live(&moto, 1);
    check_launch(&moto, &live[0], "t", child.id());
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), Some(130));
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn sigterm_terminates_the_instance_and_deletes_the_group() {
    let moto = Moto::start(&[]);
    let proj = project(&moto, SLOW_BOOT, &["t"], "");
    let world = World::with_project(proj.path().to_owned());
    let mut child = spawn(&world, &moto, &["build", "t"]);
    wait_live(&moto, 1);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), Some(143));
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn a_machine_that_never_answers_and_a_target_timeout_both_end_terminated() {
    let moto = Moto::start(&[]);
    // Unreachable until the boot timeout.
    let proj = project(
        &moto,
        "instance_types = [\"t3.micro\"]\nboot_timeout = \"3s\"\n",
        &["t"],
        "",
    );
    let world = World::with_project(proj.path().to_owned());
    let out = run(&world, &moto, &["build", "t"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("t failed in boot") && err.contains("did not accept SSH within 3s"),
        "{err}"
    );
    assert_eq!(moto.instances().len(), 1);
    assert_nothing_left(&moto);
    world.assert_clean();

    // The target's own deadline, while the machine is still booting.
    let proj = project(&moto, SLOW_BOOT, &["t"], "timeout = \"4s\"\n");
    let world = World::with_project(proj.path().to_owned());
    let out = run(&world, &moto, &["build", "t"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("timed out after 4s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(moto.instances().len(), 2);
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn twenty_targets_launch_in_parallel_each_with_its_own_keys_and_all_are_terminated() {
    let moto = Moto::start(&[]);
    let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let proj = project(
        &moto,
        "instance_types = [\"t3.micro\"]\nboot_timeout = \"40s\"\nmax_lifetime = \"2h\"\n",
        &refs,
        "",
    );
    let world = World::with_project(proj.path().to_owned());
    let mut child = spawn(
        &world,
        &moto,
        &["build", "--all", "--keep-going", "-j", "20"],
    );
    let pid = child.id();
    // All twenty are up at the same time.
    let live = wait_live(&moto, 20);
    assert_eq!(live.len(), 20);
    let mut targets: Vec<String> = live
        .iter()
        .map(|i| i.tags["runner:target"].clone())
        .collect();
    targets.sort();
    assert_eq!(targets, names);
    let mut host_keys = std::collections::HashSet::new();
    for i in &live {
        check_launch(&moto, i, &i.tags["runner:target"], pid);
        let ud = moto.user_data(&i.id);
        let public = ud
            .lines()
            .find_map(|l| l.trim().strip_prefix("ed25519_public: "))
            .unwrap()
            .to_owned();
        assert!(host_keys.insert(public), "two machines share a host key");
    }
    assert_eq!(wait_exit(&mut child, Duration::from_secs(300)), Some(1));
    assert_eq!(moto.instances().len(), 20);
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn gc_finds_what_a_killed_runner_left_and_leaves_untagged_instances_alone() {
    let moto = Moto::start(&[]);
    let stranger = moto.untagged_instance();
    let proj = project(&moto, SLOW_BOOT, &["t"], "");
    let world = World::with_project(proj.path().to_owned());
    let mut child = spawn(&world, &moto, &["build", "t"]);
    let live = wait_live(&moto, 1);
    signal(&child, libc::SIGKILL);
    let _ = wait_exit(&mut child, Duration::from_secs(30));
    let group = live[0].groups[0].clone();

    // From the local record: listed, and a dry run removes nothing.
    let dry = run(&world, &moto, &["gc"]);
    let listed = stdout(&dry);
    assert!(
        listed.contains("orphan  machine") && listed.contains("ec2"),
        "{listed}"
    );
    assert_eq!(wait_live(&moto, 1).len(), 1);

    // From the tags alone (another state dir, as on another machine or after a lost disk).
    let elsewhere = World::with_project(proj.path().to_owned());
    let dry = run(&elsewhere, &moto, &["gc"]);
    assert!(
        stdout(&dry).contains(&format!("orphan  instance {}", live[0].id))
            && stdout(&dry).contains(&format!("orphan  security group {group}")),
        "{}",
        stdout(&dry)
    );
    assert!(
        !stdout(&dry).contains(&stranger),
        "gc listed an instance runner did not make"
    );
    let forced = run(&elsewhere, &moto, &["gc", "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert_nothing_left(&moto);

    // The stale local record goes too (its instance is already gone: idempotent).
    let forced = run(&world, &moto, &["gc", "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert!(
        stdout(&forced).contains("removed machine"),
        "{}",
        stdout(&forced)
    );
    world.assert_clean();

    let stranger_state = moto
        .instances()
        .into_iter()
        .find(|i| i.id == stranger)
        .unwrap()
        .state;
    assert_eq!(
        stranger_state, "running",
        "gc touched an instance runner did not make"
    );
}

#[test]
fn no_capacity_falls_back_to_the_next_instance_type_and_runs_out_cleanly() {
    let moto = Moto::start(&["c5.large", "m5.large"]);
    let proj = project(
        &moto,
        "instance_types = [\"c5.large\", \"t3.micro\"]\nboot_timeout = \"10m\"\n",
        &["t"],
        "",
    );
    let world = World::with_project(proj.path().to_owned());
    let mut child = spawn(&world, &moto, &["build", "t"]);
    let live = wait_live(&moto, 1);
    assert_eq!(live[0].instance_type, "t3.micro");
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), Some(130));
    assert_nothing_left(&moto);

    // No type has capacity: the target waits for some, saying why, until its timeout; the
    // temporary group is gone.
    let proj = project(
        &moto,
        "instance_types = [\"c5.large\", \"m5.large\"]\n",
        &["t"],
        "timeout = \"6s\"\n",
    );
    let world = World::with_project(proj.path().to_owned());
    let out = run(&world, &moto, &["build", "t"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("t failed in boot: timed out after 6s")
            && err.contains(
                "waiting: no room for any instance type: c5.large: \
                             InsufficientInstanceCapacity; m5.large: InsufficientInstanceCapacity"
            ),
        "{err}"
    );
    assert_eq!(moto.instances().len(), 1);
    assert_nothing_left(&moto);
    world.assert_clean();
}

/// A manifest of a build on EC2 is rebuilt on EC2 with the AMI it records (not the newest the
/// builder would pick): the launch uses it, and like the other tests here it stops at SSH,
/// leaving nothing behind.
#[test]
fn reproducing_an_ec2_build_launches_the_recorded_ami() {
    let moto = Moto::start(&[]);
    let newer = moto.register_ami("debian-12-amd64-20261201-1000");
    let proj = project(
        &moto,
        "instance_types = [\"t3.micro\"]\nboot_timeout = \"3s\"\n",
        &["t"],
        "",
    );
    // The builder now names the newer AMI; the recorded build used moto.ami.
    let builder = std::fs::read_to_string(proj.path().join("builders/cloud.toml"))
        .unwrap()
        .replace(&moto.ami, &newer);
    std::fs::write(proj.path().join("builders/cloud.toml"), builder).unwrap();
    let ctx = proj.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("a.txt"), "a\n").unwrap();
    let digest = runner::context::Context::scan(&runner::context::ContextOptions {
        root: ctx.clone(),
        exclude: vec![],
    })
    .unwrap()
    .digest()
    .unwrap();
    let script = "#!/bin/sh\ntrue\n";
    let manifest = serde_json::json!({
        "schema": 2, "runner_version": "0.1.0", "target": "t",
        "builder": {"name": "cloud",
                    "recipe": {"backend": "ec2", "ami": {"id": moto.ami}, "image": moto.ami, "arch": "amd64"},
                    "recipe_digest": "0".repeat(64)},
        "base_image_sha256": moto.ami, "context_digest": digest, "context_excludes": [],
        "script": {"name": "build.sh", "sha256": runner::manifest::sha256_hex(script.as_bytes()),
                   "content": script},
        "artifact_globs": [], "env": {}, "source_date_epoch": 315532800,
        "inputs_digest": "1".repeat(64), "started_unix": 1, "finished_unix": 2, "artifacts": [],
    });
    let path = proj.path().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let world = World::with_project(proj.path().to_owned());
    let out = run(
        &world,
        &moto,
        &[
            "reproduce",
            path.to_str().unwrap(),
            "--context",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "moto has no machines to reach");
    assert!(
        stderr(&out).contains("did not accept SSH"),
        "{}",
        stderr(&out)
    );
    let launched = moto.instances();
    assert_eq!(launched.len(), 1);
    assert_eq!(
        launched[0].image, moto.ami,
        "the recorded AMI, not the builder's newer one"
    );
    assert_nothing_left(&moto);
    world.assert_clean();
}

/// A run that publishes to S3 hands EC2 machines their context as a presigned URL of the
/// pack, which the user data fetches while the machine boots; the pack is uploaded once and
/// removed when the run ends.
#[test]
fn the_user_data_fetches_the_context_pack_by_presigned_url() {
    let moto = Moto::start(&[]);
    let server = garage::Garage::start();
    let proj = project(
        &moto,
        "instance_types = [\"t3.micro\"]\nboot_timeout = \"3s\"\n",
        &["t"],
        "",
    );
    let toml = std::fs::read_to_string(proj.path().join("runner.toml")).unwrap();
    std::fs::write(
        proj.path().join("runner.toml"),
        format!(
            "[store]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n\n{toml}",
            server.endpoint()
        ),
    )
    .unwrap();
    let world = World::with_project(proj.path().to_owned());
    let mut cmd = cmd(&world, &moto);
    cmd.env("AWS_ACCESS_KEY_ID", garage::KEY)
        .env("AWS_SECRET_ACCESS_KEY", garage::SECRET)
        .env("AWS_ENDPOINT_URL_EC2", moto.endpoint());
    let out = cmd
        .args(["build", "t", "--upload", "s3://bucket/ci"])
        .output()
        .unwrap();
    eprintln!("{}", stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(1),
        "moto's machines are never reachable"
    );
    let launched = moto.instances();
    assert_eq!(launched.len(), 1);
    let ud = moto.user_data(&launched[0].id);
    assert!(
        ud.contains("runcmd:") && ud.contains(".runner/packs/"),
        "{ud}"
    );
    assert!(ud.contains("X-Amz-Signature"), "a presigned URL: {ud}");
    assert!(
        !server.holds_a_context_pack(),
        "the shared pack outlived the run"
    );
    assert_nothing_left(&moto);
    world.assert_clean();
}
