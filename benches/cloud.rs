//! Cloud-image builders beside runner's own image, side by side in one run: first use
//! (runner's image: baked from Debian packages; the cloud image: downloaded from a loopback
//! HTTP server, verified and customised) and per-build boot-to-SSH-ready.
//!
//! `cargo bench --bench cloud` (as root). The cloud image is the tests' stand-in
//! (`tests/cloud/standin-image.sh`: UEFI, systemd-boot, systemd, cloud-init), made once under
//! `BENCH_DIR`. Both first uses start from an empty cache. Env: `BENCH_RUNS` (default 5).

#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runner::config::Builder;
use runner::machine::{self, AccelChoice, MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

const OWN: &str = "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
                   arch = \"amd64\"\nvcpus = 2\nmemory = \"1G\"\ndisk = \"4G\"\n";

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bench = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("runner-bench"));
    let served = bench.join("cloud-served");
    let image = standin(&repo, &bench, &served);
    let server = http::FileServer::start(served.clone(), "", 0, 0);
    let sha = runner::digest::sha256_file(&image).unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("builders")).unwrap();
    std::fs::write(project.path().join("builders/own.toml"), OWN).unwrap();
    std::fs::write(
        project.path().join("builders/cloud.toml"),
        format!(
            "backend = \"qemu\"\narch = \"amd64\"\nfirmware = \"uefi\"\nssh_user = \"builder\"\n\
             image = {{ url = \"{}\", sha256 = \"{sha}\" }}\nvcpus = 2\nmemory = \"1G\"\ndisk = \"4G\"\n",
            server.url("standin.qcow2")
        ),
    )
    .unwrap();
    let own = Builder::find(project.path(), "own").unwrap();
    let cloud = Builder::find(project.path(), "cloud").unwrap();
    let cache = tempfile::tempdir_in(&bench).unwrap();
    let state = tempfile::tempdir().unwrap();
    let dirs = Dirs::resolve(Some(cache.path().into()), Some(state.path().into()));
    let machines = |cold: bool| {
        Machines::new(
            &dirs,
            Settings {
                accel: AccelChoice::Tcg,
                cold,
                ..Default::default()
            },
        )
    };
    let (warm, cold) = (machines(false), machines(true));
    let rt = tokio::runtime::Runtime::new().unwrap();

    // First use, from an empty cache, one after the other (each uses both cores).
    let first = |b: &Builder| {
        let t = Instant::now();
        rt.block_on(cold.backend(b).prepare(&Report::Lines))
            .expect("first use");
        t.elapsed()
    };
    let own_first = first(&own);
    let cloud_first = first(&cloud);
    // The warm-start snapshot is made once, outside the timings.
    let _ = boot(&rt, &warm, &own);

    let sides: [(&str, &Machines, &Builder); 3] = [
        ("runner's image, warm start", &warm, &own),
        ("runner's image, cold boot", &cold, &own),
        ("cloud image (UEFI, cloud-init), cold boot", &cold, &cloud),
    ];
    let mut times: Vec<Vec<Duration>> = vec![vec![]; sides.len()];
    for i in 0..runs {
        // Interleaved, so drift in the host's load hits every side alike.
        for (n, (_, m, b)) in sides.iter().enumerate() {
            times[n].push(boot(&rt, m, b));
        }
        let line: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2}s", t[i].as_secs_f64()))
            .collect();
        eprintln!("run {}: {}", i + 1, line.join(", "));
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let labels: Vec<&str> = sides.iter().map(|(l, _, _)| *l).collect();
    print(own_first, cloud_first, &labels, &medians, runs);
}

/// Both first uses, then each side's boot median with the cloud image's as the ratio's base.
fn print(
    own_first: Duration,
    cloud_first: Duration,
    labels: &[&str],
    medians: &[f64],
    runs: usize,
) {
    println!("first use, from an empty cache (TCG, 2 vCPU, 1 GiB, 4 GiB disk):");
    println!(
        "  {:<44} {:>7.2} s",
        "runner's image (mmdebstrap bake)",
        own_first.as_secs_f64()
    );
    println!(
        "  {:<44} {:>7.2} s   cloud/own {:.2}x",
        "cloud image (download + verify + customise)",
        cloud_first.as_secs_f64(),
        cloud_first.as_secs_f64() / own_first.as_secs_f64()
    );
    println!("per-build boot-to-SSH-ready, median of {runs}:");
    let cloud_s = medians[2];
    for (label, m) in labels.iter().zip(medians) {
        println!(
            "  {label:<44} {m:>7.2} s   cloud/this {:>5.1}x",
            cloud_s / m
        );
    }
}

/// The stand-in image, made once, and hard-linked where the server serves it.
fn standin(repo: &Path, bench: &Path, served: &Path) -> PathBuf {
    // Keyed by the script, as the tests' copy is: a changed script makes it anew.
    let script = std::fs::read(repo.join("tests/cloud/standin-image.sh")).unwrap();
    let digest = runner::digest::sha256_hex(&script);
    let dir = bench.join(format!("cloud-standin-{}", &digest[..16]));
    if !dir.join("disk.qcow2").exists() {
        eprintln!("making the stand-in cloud image (once) ...");
        let mirror = runner::machine::qemu::image::mirror::resolve(
            std::env::var("RUNNER_MIRROR").ok().as_deref(),
        )
        .unwrap();
        let ok = Command::new("bash")
            .arg(repo.join("tests/cloud/standin-image.sh"))
            .arg(&mirror)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "stand-in image failed");
    }
    std::fs::create_dir_all(served).unwrap();
    let link = served.join("standin.qcow2");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(dir.join("disk.qcow2"), &link)
        .or_else(|_| std::fs::copy(dir.join("disk.qcow2"), &link).map(|_| ()))
        .unwrap();
    link
}

/// Launch to a pinned SSH session, then teardown (not timed).
fn boot(rt: &tokio::runtime::Runtime, machines: &Machines, b: &Builder) -> Duration {
    let backend = machines.backend(b);
    let t = Instant::now();
    let lease = rt
        .block_on(machine::lease(
            backend.as_ref(),
            &MachineSpec::of(b, "bench"),
            &Default::default(),
        ))
        .expect("runner machine");
    let ready = t.elapsed();
    rt.block_on(lease.release(false)).unwrap();
    ready
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}
