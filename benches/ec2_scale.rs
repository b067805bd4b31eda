//! The EC2 control plane at scale, against a local moto server, at 200 and 1,000 targets:
//!
//! - **control plane**: n machines launched at once through runner's EC2 backend (the run's
//!   security group, RunInstances, the shared poller's wait for `running`), all held, then
//!   all torn down and the run closed — beside a bare SDK baseline doing only RunInstances
//!   and TerminateInstances for as many instances, in the same run. Wall time, API calls per
//!   machine by operation, and this process's peak memory for each side.
//! - **whole run**: `runner build` of n targets at `-j n`, every machine live at once (moto's
//!   machines never answer SSH, so each target waits out a short boot timeout and fails in
//!   boot, torn down): wall time and the runner process's peak RSS.
//!
//! `cargo bench --bench ec2_scale`. Env: `BENCH_SIZES` (default `200,1000`),
//! `RUNNER_MOTO_PYTHON`.

#[path = "../tests/common/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner::config::Builder;
use runner::guest::GuestKeys;
use runner::machine::ec2::cleanup;
use runner::machine::{MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    // SAFETY: set before the runtime (and any other thread) starts.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in sizes {
        // A fresh server per size: moto slows down as it accumulates instances.
        let server = moto::Moto::start(&[]);
        let (bare, bare_calls, bare_peak) = baseline(&rt, &server, n);
        let server = moto::Moto::start(&[]);
        let (ours, calls, peak) = control_plane(&rt, &server, n);
        let server = moto::Moto::start(&[]);
        let (whole, whole_peak) = whole_run(&server, n);
        let total: u64 = calls.values().sum();
        println!("EC2 control plane, {n} machines at once, moto on loopback:");
        println!(
            "  runner   {:>7.2} s  {:>6} API calls  {:.2} per machine  peak RSS {:.1} MiB",
            ours.as_secs_f64(),
            total,
            total as f64 / n as f64,
            mib(peak)
        );
        for (op, c) in &calls {
            println!(
                "             {op:<32} {c:>6}  {:.3} per machine",
                *c as f64 / n as f64
            );
        }
        println!(
            "  baseline {:>7.2} s  {:>6} API calls  {:.2} per machine  peak RSS {:.1} MiB  (RunInstances + TerminateInstances only)",
            bare.as_secs_f64(),
            bare_calls,
            bare_calls as f64 / n as f64,
            mib(bare_peak)
        );
        println!(
            "  ratio runner / baseline: {:.2}x time, {:.2}x calls",
            ours.as_secs_f64() / bare.as_secs_f64(),
            total as f64 / bare_calls as f64
        );
        println!(
            "  whole run: `runner build` of {n} targets at -j {n}: {:.2} s, runner's peak RSS {:.1} MiB",
            whole.as_secs_f64(),
            mib(whole_peak)
        );
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// This process's peak RSS in KiB since the last [`reset_peak`].
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Starts a new peak (proc(5): writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

fn calls_since(before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    cleanup::api_calls_by_operation()
        .into_iter()
        .map(|(op, c)| {
            let d = c - before.get(&op).copied().unwrap_or(0);
            (op, d)
        })
        .filter(|(_, c)| *c > 0)
        .collect()
}

/// The two calls a launch cannot do without, for n instances at once.
fn baseline(rt: &tokio::runtime::Runtime, server: &moto::Moto, n: usize) -> (Duration, u64, u64) {
    reset_peak();
    let t = Instant::now();
    let calls = rt.block_on(async {
        let client =
            runner::machine::ec2::client(Some("us-east-1"), Some(&server.endpoint())).await;
        let before = cleanup::api_calls();
        // At most 100 requests in flight: moto serves one at a time, and 1,000 connects at
        // once time out (runner's own launches wait on the shared poller instead).
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
        let ids: Vec<String> = futures_join(n, |_| {
            let (c, ami, subnet) = (client.clone(), server.ami.clone(), server.subnet.clone());
            let gate = gate.clone();
            async move {
                let _turn = gate.acquire().await.unwrap();
                c.run_instances()
                    .image_id(ami)
                    .subnet_id(subnet)
                    .min_count(1)
                    .max_count(1)
                    .send()
                    .await
                    .unwrap()
                    .instances()[0]
                    .instance_id()
                    .unwrap()
                    .to_owned()
            }
        })
        .await;
        futures_join(n, |i| {
            let (c, id, gate) = (client.clone(), ids[i].clone(), gate.clone());
            async move {
                let _turn = gate.acquire().await.unwrap();
                c.terminate_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .unwrap();
            }
        })
        .await;
        cleanup::api_calls() - before
    });
    (t.elapsed(), calls, peak_kib())
}

/// n machines through runner's backend: all launched, all held, all torn down, run closed.
fn control_plane(
    rt: &tokio::runtime::Runtime,
    server: &moto::Moto,
    n: usize,
) -> (Duration, BTreeMap<String, u64>, u64) {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("builders")).unwrap();
    std::fs::write(
        work.path().join("builders/scale.toml"),
        server.builder(&format!(
            "instance_types = [\"t3.micro\"]\nmax_instances = {n}\n"
        )),
    )
    .unwrap();
    let dirs = Dirs::resolve(None, Some(work.path().join("state")));
    let builder = Builder::find(work.path(), "scale").unwrap();
    let machines = Machines::new(&dirs, Settings::default());
    reset_peak();
    let t = Instant::now();
    let calls = rt.block_on(async {
        let backend = machines.backend(&builder);
        backend.prepare(&Report::Lines).await.unwrap();
        let before = cleanup::api_calls_by_operation();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
        futures_join(n, |i| {
            let (backend, barrier) = (backend.clone(), barrier.clone());
            let spec = MachineSpec {
                boot_timeout: Duration::from_secs(600),
                ..MachineSpec::of(&builder, &format!("t{i:04}"))
            };
            async move {
                let keys = GuestKeys::generate().unwrap();
                let mut m = backend.launch(&spec, &keys).await.unwrap();
                barrier.wait().await;
                m.teardown(false).await.unwrap();
            }
        })
        .await;
        machines.close().await.unwrap();
        calls_since(&before)
    });
    let took = t.elapsed();
    let peak = peak_kib();
    assert_eq!(server.live_instances().len(), 0, "instances left running");
    assert!(server.runner_groups().is_empty(), "groups left");
    (took, calls, peak)
}

/// `runner build` of n targets at once; its wall time and peak RSS (KiB, from wait4).
fn whole_run(server: &moto::Moto, n: usize) -> (Duration, u64) {
    let work = tempfile::tempdir().unwrap();
    // The project directory is the targets' build context: state and cache stay outside it.
    let (root, outside) = (&work.path().join("project"), work.path());
    std::fs::create_dir_all(root.join("builders")).unwrap();
    std::fs::write(
        root.join("builders/scale.toml"),
        server.builder(&format!(
            "instance_types = [\"t3.micro\"]\nmax_instances = {n}\nboot_timeout = \"15s\"\n"
        )),
    )
    .unwrap();
    std::fs::write(root.join("build.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let targets: String = (0..n)
        .map(|i| format!("[target.t{i:04}]\nbuilder = \"scale\"\nscript = \"build.sh\"\n"))
        .collect();
    std::fs::write(root.join("runner.toml"), targets).unwrap();
    let (events, errors) = (
        tempfile::NamedTempFile::new().unwrap(),
        tempfile::NamedTempFile::new().unwrap(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    server.env(&mut cmd);
    cmd.current_dir(root)
        .args(["--state-dir", &outside.join("state").to_string_lossy()])
        .args(["--cache-dir", &outside.join("cache").to_string_lossy()])
        .args(["--message-format", "json", "build", "--all", "--keep-going"])
        .args(["-j", &n.to_string()])
        .stdout(Stdio::from(events.as_file().try_clone().unwrap()))
        .stderr(Stdio::from(errors.as_file().try_clone().unwrap()));
    let t = Instant::now();
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage outlive the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let took = t.elapsed();
    std::mem::forget(child);
    // The figure counts only if every target got a machine and waited its boot out.
    let events = std::fs::read_to_string(events.path()).unwrap();
    let in_boot = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "finished" && e["phase"] == "boot")
        .count();
    let errors = std::fs::read_to_string(errors.path()).unwrap();
    assert_eq!(
        in_boot,
        n,
        "not every target reached boot:\n{}\n{}",
        tail(&events),
        tail(&errors)
    );
    assert_eq!(server.live_instances().len(), 0, "instances left running");
    assert!(server.runner_groups().is_empty(), "groups left");
    (took, usage.ru_maxrss as u64)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Runs `n` futures made by `f` concurrently and collects their outputs in order.
async fn futures_join<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let fut = f(i);
        set.spawn(async move { (i, fut.await) });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, v) = r.unwrap();
        out[i] = Some(v);
    }
    out.into_iter().map(Option::unwrap).collect()
}
