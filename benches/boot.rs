//! Boot-to-SSH-ready: runner's image and machine layer against a stock systemd Debian booted
//! by a bare QEMU command line and polled with OpenSSH, measured side by side in one run.
//!
//! `cargo bench --bench boot` (as root; bakes both images on first use). Env: `BENCH_RUNS`
//! (default 3), `RUNNER_CACHE_DIR` (where runner's image lives), `BENCH_DIR` (baseline image).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner::config::Builder;
use runner::machine::boot::BootPhase;
use runner::machine::{self, AccelChoice, MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

/// A systemd builder on the same suite, measured beside the lean one and the stock baseline.
const SYSTEMD: &str = "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
                       arch = \"amd64\"\ninit = \"systemd\"\n";

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bench_dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("runner-bench"));
    std::fs::create_dir_all(bench_dir.join("builders")).unwrap();
    std::fs::write(bench_dir.join("builders/bench-systemd.toml"), SYSTEMD).unwrap();
    let state = tempfile::tempdir().unwrap();
    let dirs = Dirs::resolve(
        std::env::var_os("RUNNER_CACHE_DIR").map(PathBuf::from),
        Some(state.path().into()),
    );
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
    let lean = Builder::find(&repo, "bookworm-amd64").unwrap();
    let systemd = Builder::find(&bench_dir, "bench-systemd").unwrap();
    let sides: [(&str, &Machines, &Builder); 4] = [
        ("runner lean, warm start (snapshot restore)", &warm, &lean),
        ("runner lean, cold boot", &cold, &lean),
        ("runner systemd init, warm start", &warm, &systemd),
        ("runner systemd init, cold boot", &cold, &systemd),
    ];
    for (_, m, b) in &sides {
        rt.block_on(m.backend(b).prepare(&Report::Lines))
            .expect("runner image");
    }
    // Snapshots are made once, outside the timings (as on a builder's first warm start).
    let _ = runner_boot(&rt, &warm, &lean);
    let _ = runner_boot(&rt, &warm, &systemd);
    let stock = stock_image(&repo, &bench_dir);

    // Per side: SSH ready, and the first command's output back (the stock side's one figure
    // is both: OpenSSH's `true` succeeding).
    let mut times: Vec<Vec<Duration>> = vec![vec![]; sides.len() + 1];
    let mut firsts: Vec<Vec<Duration>> = vec![vec![]; sides.len()];
    let (mut loads, mut restores) = (vec![], vec![]);
    for i in 0..runs {
        // Interleaved, so drift in machine load hits every side alike.
        for (n, (label, m, b)) in sides.iter().enumerate() {
            let (ready, first, phases) = runner_boot(&rt, m, b);
            if n == 0 {
                loads.push(phase(&phases, "loaded"));
                restores.push(phase(&phases, "identity"));
            }
            eprintln!("  {label}: {}", describe(&phases));
            times[n].push(ready);
            firsts[n].push(first);
        }
        times[sides.len()].push(boot_stock(&stock, &bench_dir));
        let line: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2}s", t[i].as_secs_f64()))
            .collect();
        eprintln!("run {}: {}", i + 1, line.join(", "));
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let first_medians: Vec<f64> = firsts.iter_mut().map(|t| median(t)).collect();
    let stock_s = medians[sides.len()];
    println!(
        "boot under TCG, median of {runs} (q35, 2 vCPU, 1 GiB): SSH ready | first command's \
         output"
    );
    for (((label, _, _), m), f) in sides.iter().zip(&medians).zip(&first_medians) {
        println!(
            "  {label:<46} {m:>7.2} s | {f:>6.2} s   stock/this {:>5.1}x",
            stock_s / f
        );
    }
    println!(
        "  {:<46} {:>7} | {stock_s:>6.2} s",
        "stock Debian + systemd, bare qemu, OpenSSH", ""
    );
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  warm: snapshot loaded and resumed {:.2} s, guest has its identity {:.2} s after the \
         machine's start (medians; from before its overlay is made)",
        med(&mut loads),
        med(&mut restores)
    );
}

fn phase(phases: &[BootPhase], name: &str) -> f64 {
    phases
        .iter()
        .find(|p| p.phase == name)
        .map_or(f64::NAN, |p| p.seconds)
}

fn describe(phases: &[BootPhase]) -> String {
    phases
        .iter()
        .map(|p| format!("{} {:.2}", p.phase, p.seconds))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Launch to a pinned SSH session, then to a first command's output, then teardown (not
/// timed).
fn runner_boot(
    rt: &tokio::runtime::Runtime,
    machines: &Machines,
    b: &Builder,
) -> (Duration, Duration, Vec<BootPhase>) {
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
    let status = rt
        .block_on(lease.guest.exec(
            "echo ready",
            None,
            Box::new(tokio::io::sink()),
            Box::new(tokio::io::sink()),
        ))
        .expect("first command");
    assert!(status.success());
    let first = t.elapsed();
    let phases = lease.machine.boot_phases.clone();
    rt.block_on(lease.release(false)).unwrap();
    (ready, first, phases)
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

struct Stock {
    dir: PathBuf,
    key: PathBuf,
}

fn stock_image(repo: &Path, bench: &Path) -> Stock {
    let dir = bench.join("stock-bookworm");
    let key = bench.join("stock_key");
    if !key.exists() {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
    }
    if !dir.join("base.qcow2").exists() {
        eprintln!("baking the stock baseline image (once) ...");
        let mirror = runner::machine::qemu::image::mirror::resolve(
            std::env::var("RUNNER_MIRROR").ok().as_deref(),
        )
        .unwrap();
        run(Command::new("bash")
            .arg(repo.join("benches/stock-image.sh"))
            .arg(&mirror)
            .arg(&dir)
            .arg(key.with_extension("pub")));
    }
    Stock { dir, key }
}

fn boot_stock(stock: &Stock, bench: &Path) -> Duration {
    let overlay = bench.join("stock-overlay.qcow2");
    let _ = std::fs::remove_file(&overlay);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(stock.dir.join("base.qcow2"))
        .arg(&overlay));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "tcg", "-M", "q35", "-cpu", "qemu64", "-smp", "2", "-m", "1G",
        ])
        .args(["-nodefaults", "-display", "none", "-serial", "null"])
        .arg("-kernel")
        .arg(stock.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(stock.dir.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ok = Command::new("ssh")
            .arg("-i")
            .arg(&stock.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "ConnectTimeout=5",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = t.elapsed();
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_file(&overlay);
    ready
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?} failed");
}
