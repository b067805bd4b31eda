//! The EC2 control plane at scale: 200 machines launched (temporary security group, user data,
//! tags, RunInstances, wait for `running`) and torn down (terminate, wait for `terminated`,
//! delete the group) at once against a local moto server, beside a bare baseline that only
//! calls RunInstances and TerminateInstances for as many instances, in the same run.
//! Prints wall time, API calls and this process's peak memory. SSH is not part of it (moto
//! has no machines).
//!
//! `cargo bench --bench ec2_scale`. Env: `BENCH_MACHINES` (default 200), `RUNNER_MOTO_PYTHON`.

#[path = "../tests/common/moto.rs"]
mod moto;

use std::time::{Duration, Instant};

use runner::config::Builder;
use runner::guest::GuestKeys;
use runner::machine::ec2::cleanup;
use runner::machine::{MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

fn main() {
    let n: usize = std::env::var("BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let server = moto::Moto::start(&[]);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("builders")).unwrap();
    std::fs::write(
        work.path().join("builders/scale.toml"),
        server.builder(&format!(
            "instance_types = [\"t3.micro\"]\nmax_instances = {n}\n"
        )),
    )
    .unwrap();
    // SAFETY: set before the runtime (and any other thread) starts.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dirs = Dirs::resolve(None, Some(work.path().join("state")));
    let builder = Builder::find(work.path(), "scale").unwrap();
    let machines = Machines::new(&dirs, Settings::default());

    // Baseline: the two calls a launch cannot do without, for n instances at once.
    let t = Instant::now();
    let bare_calls = rt.block_on(async {
        let client =
            runner::machine::ec2::client(Some("us-east-1"), Some(&server.endpoint())).await;
        let before = cleanup::api_calls();
        let ids: Vec<String> = futures_join(n, |_| {
            let (c, ami, subnet) = (client.clone(), server.ami.clone(), server.subnet.clone());
            async move {
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
            let (c, id) = (client.clone(), ids[i].clone());
            async move {
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
    let bare = t.elapsed();

    let t = Instant::now();
    let runner_calls = rt.block_on(async {
        let backend = machines.backend(&builder);
        backend.prepare(&Report::Lines).await.unwrap();
        let before = cleanup::api_calls();
        futures_join(n, |i| {
            let backend = backend.clone();
            let spec = MachineSpec {
                boot_timeout: Duration::from_secs(600),
                ..MachineSpec::of(&builder, &format!("t{i:03}"))
            };
            async move {
                let keys = GuestKeys::generate().unwrap();
                let mut m = backend.launch(&spec, &keys).await.unwrap();
                m.teardown(false).await.unwrap();
            }
        })
        .await;
        cleanup::api_calls() - before
    });
    let ours = t.elapsed();
    let left = server.live_instances().len();
    assert_eq!(left, 0, "instances left running");
    assert!(server.runner_groups().is_empty(), "groups left");

    let peak = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap();
    println!("EC2 control plane, {n} machines at once, moto on loopback:");
    println!(
        "  runner   {:>7.2} s  {:>5} API calls  ({:.1} per machine: group, ingress, run, waits, console, terminate, group delete)",
        ours.as_secs_f64(),
        runner_calls,
        runner_calls as f64 / n as f64
    );
    println!(
        "  baseline {:>7.2} s  {:>5} API calls  (RunInstances + TerminateInstances only)",
        bare.as_secs_f64(),
        bare_calls
    );
    println!(
        "  ratio runner / baseline: {:.2}x time, {:.2}x calls; peak memory of this process {peak}",
        ours.as_secs_f64() / bare.as_secs_f64(),
        runner_calls as f64 / bare_calls as f64
    );
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
