//! Fan-out: N machines of one builder started at once, warm (all restored from one snapshot)
//! against cold (each booting), side by side in one run: wall time until every machine has
//! run its first command, and what the N QEMU processes cost the host while all are up.
//!
//! Memory is the sum of each QEMU's PSS (`/proc/<pid>/smaps_rollup`): a page N processes
//! share counts 1/N to each, so the sum is what the fan-out really holds. A warm machine maps
//! the snapshot's memory file copy-on-write, so its clean pages are shared; a cold one has
//! all of its own. RSS (which counts a shared page in every process) is printed beside it.
//!
//! `cargo bench --bench fanout` (as root; bakes runner's image on first use). Env:
//! `FANOUT` (default `1,4,8`), `RUNNER_CACHE_DIR` (where the image lives).

use std::path::{Path, PathBuf};
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
