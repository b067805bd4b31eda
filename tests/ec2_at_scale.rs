//! The EC2 fleet against moto, at the scale and in the ways a fleet breaks: spot instances
//! terminated from outside (reclaimed), the API calls a run spends per machine (counted by
//! the server, not by runner), and a SIGKILL while hundreds of machines are being launched.
//! moto's machines never answer SSH, so these targets end in boot; what is checked is what
//! EC2 saw.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/moto.rs"]
mod moto;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use moto::{InstanceInfo, Moto};

/// runner's access key id in these tests (moto reads only 20-character ones): the server
/// counts its calls apart from the test's own.
const RUNNER_KEY: &str = "AKIARUNNERTESTKEY000";

fn project(moto: &Moto, builder_extra: &str, targets: usize) -> tempfile::TempDir {
    let toml: String = (0..targets)
        .map(|i| format!("[target.t{i}]\nbuilder = \"cloud\"\nscript = \"build.sh\"\n"))
        .collect();
    Project::new()
        .builder("cloud", &moto.builder(builder_extra))
        .file("build.sh", "#!/bin/sh\ntrue\n")
        .toml(&toml)
        .done()
}

fn command(world: &World, moto: &Moto, args: &[&str]) -> std::process::Command {
    let mut c = world.cmd();
    moto.env(&mut c);
    c.env("AWS_ACCESS_KEY_ID", RUNNER_KEY).args(args);
    c
}

/// A runner process whose stdout is read on a thread (so a chatty run never blocks on the
/// pipe), and which a failing test does not leave behind: dropped while it still runs, it
/// gets SIGTERM (its own teardown), then SIGKILL.
struct Running {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn stdout(&mut self) -> String {
        self.stdout.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(world: &World, moto: &Moto, args: &[&str]) -> Running {
    let mut child = command(world, moto, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    Running {
        child,
        stdout: Some(reader),
    }
}

/// The instances runner launched, in any state.
fn runners(moto: &Moto) -> Vec<InstanceInfo> {
    moto.instances()
        .into_iter()
        .filter(|i| i.tags.contains_key("runner:run-id"))
        .collect()
}

/// Polls until `f` gives something, for at most five minutes; once a second, since each
/// look lists every instance and moto serves one request at a time.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn assert_nothing_left(moto: &Moto) {
    let live: Vec<_> = runners(moto)
        .into_iter()
        .filter(|i| i.state != "terminated")
        .collect();
    assert!(live.is_empty(), "instances left: {live:?}");
    assert_eq!(moto.runner_groups(), Vec::<String>::new(), "groups left");
}

#[test]
fn a_reclaimed_spot_instance_is_reported_and_the_target_starts_again_on_demand() {
    let moto = Moto::start(&[]);
    let builder = "instance_types = [\"t3.micro\"]\nspot = true\nboot_timeout = \"5m\"\n\
                   retry_on_reclaim = 1\non_demand_after_reclaim = true\n";
    let proj = project(&moto, builder, 1);
    let world = World::with_project(proj.path().to_owned());
    let mut runner = spawn(&world, &moto, &["--message-format", "json", "build"]);

    // Taken away while runner waits for it: the state says so, whatever SSH does.
    let first = eventually("a first instance", || runners(&moto).pop());
    assert!(first.spot, "{first:?}");
    moto.terminate(&first.id);
    // A fresh machine, not the dead one: another instance, on-demand this time.
    let second = eventually("a second instance", || {
        runners(&moto).into_iter().find(|i| i.id != first.id)
    });
    assert!(!second.spot, "{second:?}");
    assert_eq!(second.tags["runner:target"], "t0");
    // And that one too: no retries are left.
    moto.terminate(&second.id);
    assert_eq!(
        wait_exit(&mut runner.child, Duration::from_secs(120)),
        Some(1)
    );
    let out = runner.stdout();
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let reclaims: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "machine_reclaimed")
        .collect();
    assert_eq!(reclaims.len(), 2, "{out}");
    assert_eq!(reclaims[0]["retrying"], true);
    assert_eq!(reclaims[1]["retrying"], false);
    for (r, id) in reclaims.iter().zip([&first.id, &second.id]) {
        assert_eq!(r["target"], "t0");
        assert!(r["reason"].as_str().unwrap().contains(id.as_str()), "{r}");
    }
    let t = finished(&events, "t0");
    assert_eq!(t["failure"], "machine_reclaimed", "{t}");
    assert_eq!(runners(&moto).len(), 2);
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn forty_machines_cost_at_most_four_api_calls_each_and_are_tagged_at_launch() {
    const N: usize = 40;
    let moto = Moto::start(&[]);
    let proj = project(
        &moto,
        "instance_types = [\"t3.micro\"]\nboot_timeout = \"3s\"\n",
        N,
    );
    let world = World::with_project(proj.path().to_owned());
    let out = run_shown(command(&world, &moto, &[]), &["build", "-j", "40"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(runners(&moto).len(), N);
    let calls = moto.calls_by(RUNNER_KEY);
    let total: u64 = calls.values().sum();
    eprintln!("{N} machines, {total} calls: {calls:?}");
    assert!(total as f64 / N as f64 <= 4.0, "{calls:?}");
    assert_eq!(calls["RunInstances"], N as u64);
    // Tags come with RunInstances; waits and terminations are shared by the machines.
    assert!(!calls.contains_key("CreateTags"), "{calls:?}");
    assert!(calls["DescribeInstances"] <= (N / 4) as u64, "{calls:?}");
    assert!(calls["TerminateInstances"] <= (N / 4) as u64, "{calls:?}");
    assert_nothing_left(&moto);
    world.assert_clean();
}

#[test]
fn sigkill_while_two_hundred_machines_launch_then_gc_force_leaves_nothing() {
    // `RUNNER_TEST_EC2_SCALE=1000` for the full size (minutes, so not by default).
    let n: usize = std::env::var("RUNNER_TEST_EC2_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let moto = Moto::start(&[]);
    let builder =
        format!("instance_types = [\"t3.micro\"]\nboot_timeout = \"10m\"\nmax_instances = {n}\n");
    let proj = project(&moto, &builder, n);
    let world = World::with_project(proj.path().to_owned());
    let mut runner = spawn(&world, &moto, &["build", "-j", &n.to_string()]);
    // Counted from the server's call log: listing hundreds of instances is slow in moto.
    let launches = || moto.calls_by(RUNNER_KEY).get("RunInstances").copied();
    eventually("a quarter of the machines launched", || {
        launches().filter(|&l| l >= n as u64 / 4)
    });
    signal(&runner.child, libc::SIGKILL);
    let _ = wait_exit(&mut runner.child, Duration::from_secs(30));
    let launched = launches().unwrap_or_default();
    eprintln!("{launched} of {n} machines launched when runner was killed");

    let started = Instant::now();
    let forced = run_shown(command(&world, &moto, &[]), &["gc", "--force"]);
    eprintln!("gc --force took {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert_nothing_left(&moto);
    world.assert_clean();
}
