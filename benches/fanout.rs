//! Fan-out: N machines of one builder started at once, warm (all restored from one snapshot)
//! against cold (each booting), side by side in one run: wall time until every machine has
//! run its first command, and what the N QEMU processes cost the host while all are up.
//!
//! Memory is the sum of each QEMU's PSS (`/proc/<pid>/smaps_rollup`): a page N processes
//! share counts 1/N to each, so the sum is what the fan-out really holds. A warm machine maps
//! the snapshot's memory file copy-on-write, so its clean pages are shared; a cold one has
//! all of its own. RSS (which counts a shared page in every process) is printed beside it.
//!
//! Then whole builds the way a user runs them: `runner build -j N` of N trivial targets
//! against one target, warm against `--cold`: wall time, and the host's peak memory in use
//! (MemTotal − MemAvailable, sampled every 20 ms, over what was in use before the run).
//!
//! `cargo bench --bench fanout` (as root; bakes runner's image on first use). Env:
//! `FANOUT` (default `1,4,8`), `FANOUT_BUILDS` (default 8), `RUNNER_CACHE_DIR` (where the
//! image lives).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runner::config::Builder;
use runner::machine::{self, AccelChoice, Lease, MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

fn main() {
    let sizes: Vec<usize> = std::env::var("FANOUT")
        .unwrap_or_else(|_| "1,4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let state = tempfile::tempdir().unwrap();
    let dirs = Dirs::resolve(
        std::env::var_os("RUNNER_CACHE_DIR").map(PathBuf::from),
        Some(state.path().into()),
    );
    let machines = |cold: bool| {
        let settings = Settings {
            accel: AccelChoice::Tcg,
            cold,
            ..Default::default()
        };
        Machines::new(&dirs, settings)
    };
    let (warm, cold) = (machines(false), machines(true));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lean = Builder::find(&repo, "bookworm-amd64").unwrap();
    rt.block_on(warm.backend(&lean).prepare(&Report::Lines))
        .expect("runner image");
    // The snapshot is made once, outside the figures (as on a builder's first warm start).
    rt.block_on(fan_out(&warm, &lean, 1));

    println!("fan-out under TCG on this host (lean bookworm-amd64, 2 vCPU, 1 GiB each):");
    println!(
        "  {:>2}  {:>31}  {:>31}  {:>9}",
        "N", "warm: wall, PSS [guest] (RSS)", "cold: wall, PSS [guest] (RSS)", "cold/warm"
    );
    for n in sizes {
        let w = rt.block_on(fan_out(&warm, &lean, n));
        let c = rt.block_on(fan_out(&cold, &lean, n));
        println!(
            "  {n:>2}  {}  {}  {:>4.1}x mem",
            row(&w),
            row(&c),
            c.pss as f64 / w.pss.max(1) as f64
        );
    }
    let builds: usize = std::env::var("FANOUT_BUILDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    whole_builds(&repo, builds);
}

/// `runner build` of 1 and of `n` trivial targets (at `-j n`), warm and `--cold`.
fn whole_builds(repo: &Path, n: usize) {
    let proj = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proj.path().join("builders")).unwrap();
    std::fs::copy(
        repo.join("builders/bookworm-amd64.toml"),
        proj.path().join("builders/bookworm-amd64.toml"),
    )
    .unwrap();
    std::fs::write(
        proj.path().join("build.sh"),
        "#!/bin/sh\necho built > \"$RUNNER_OUT/result.txt\"\n",
    )
    .unwrap();
    let targets: String = (0..n)
        .map(|i| format!("[target.t{i}]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n"))
        .collect();
    std::fs::write(proj.path().join("runner.toml"), targets).unwrap();
    let state = tempfile::tempdir().unwrap();
    let build = |cold: bool, count: usize| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.arg("-C")
            .arg(proj.path())
            .env("RUNNER_STATE_DIR", state.path())
            .args(["--accel", "tcg"])
            .args(if cold { &["--cold"][..] } else { &[] })
            .args(["build", "--force", "-j", &count.to_string()])
            .args((0..count).map(|i| format!("t{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        measure(c)
    };
    // The snapshot exists already (made above); one warm build first warms the page cache.
    build(false, 1);
    println!("whole builds (`runner build --force`, a trivial script; wall, peak host memory):");
    println!("  {:>14}  {:>20}  {:>20}", "", "warm", "--cold");
    for count in [1, n] {
        let (w, c) = (build(false, count), build(true, count));
        println!(
            "  {:>14}  {:>7.2} s {:>9}  {:>7.2} s {:>9}   cold/warm {:.1}x time, {:.1}x memory",
            format!("{count} at -j {count}"),
            w.0.as_secs_f64(),
            mib(w.1),
            c.0.as_secs_f64(),
            mib(c.1),
            c.0.as_secs_f64() / w.0.as_secs_f64(),
            c.1 as f64 / w.1.max(1) as f64
        );
    }
}

/// Runs `cmd` (which must succeed): its wall time, and the host's peak memory in use over
/// what was in use when it started.
fn measure(mut cmd: Command) -> (Duration, u64) {
    let before = in_use();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(in_use(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    let ok = cmd.status().expect("runner").success();
    let wall = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(ok, "runner build failed");
    (wall, peak.load(Ordering::Relaxed).saturating_sub(before))
}

/// MemTotal − MemAvailable: what the host's processes hold (the page cache, where the
/// snapshot's shared memory lives, is available).
fn in_use() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    field(&info, "MemTotal:").saturating_sub(field(&info, "MemAvailable:"))
}

struct Figures {
    /// Until every machine has run its first command.
    wall: Duration,
    /// Sums over the N QEMU processes while all are up, in bytes.
    pss: u64,
    rss: u64,
    /// Of `pss`, the guests' memory (the rest is QEMU's own: TCG's code cache, devices).
    guest: u64,
}

/// Starts `n` machines at once, runs `true` in each, measures, tears them all down.
async fn fan_out(machines: &Machines, b: &Builder, n: usize) -> Figures {
    let backend = machines.backend(b);
    let started = Instant::now();
    let leases = futures_util::future::join_all((0..n).map(|i| {
        let backend = backend.clone();
        async move {
            let spec = MachineSpec::of(b, &format!("fanout-{i}"));
            let lease = machine::lease(backend.as_ref(), &spec, &Default::default())
                .await
                .expect("runner machine");
            first_command(&lease).await;
            lease
        }
    }))
    .await;
    let wall = started.elapsed();
    let (mut pss, mut rss, mut guest) = (0, 0, 0);
    for l in &leases {
        let (p, r, g) = qemu_memory(&l.machine.dir);
        pss += p;
        rss += r;
        guest += g;
    }
    for l in leases {
        l.release(false).await.unwrap();
    }
    Figures {
        wall,
        pss,
        rss,
        guest,
    }
}

async fn first_command(lease: &Lease) {
    let sink = || Box::new(tokio::io::sink());
    let status = lease
        .guest
        .exec("true", None, sink(), sink())
        .await
        .expect("first command");
    assert!(status.success());
}

/// PSS and RSS of the QEMU whose pidfile is in `dir`, and the PSS of its guest's memory
/// (the one mapping of exactly the guest's size), in bytes.
fn qemu_memory(dir: &Path) -> (u64, u64, u64) {
    let pid = std::fs::read_to_string(dir.join("qemu.pid")).expect("QEMU's pidfile");
    let pid = pid.trim();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("rollup");
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let guest = smaps
        .split_inclusive("VmFlags:")
        .find(|block| field(block, "Size:") == GUEST_MEMORY)
        .map_or(0, |block| field(block, "Pss:"));
    (field(&rollup, "Pss:"), field(&rollup, "Rss:"), guest)
}

/// The guest memory of the builder measured (`bookworm-amd64`: 1 GiB).
const GUEST_MEMORY: u64 = 1 << 30;

/// A `Name:   N kB` field of an smaps block, in bytes.
fn field(block: &str, name: &str) -> u64 {
    block
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn row(f: &Figures) -> String {
    format!(
        "{:>6.2} s {:>6} [{:>5}] ({:>5})",
        f.wall.as_secs_f64(),
        mib(f.pss),
        mib(f.guest),
        mib(f.rss)
    )
}

fn mib(bytes: u64) -> String {
    format!("{}M", bytes >> 20)
}
