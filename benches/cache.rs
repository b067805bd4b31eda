//! Build caches on a real workload: GNU hello's Debian package built from the Debian source
//! archive (examples/hello-deb: deb-src, `apt-get build-dep`, `apt-get source`,
//! `dpkg-buildpackage` under ccache) with apt's archives and lists and ccache's directory
//! cached. Side by side in one run, each `runner build --force` in a fresh TCG machine: a
//! first build (its cache just removed), a second with the cache the first left, a third with
//! `--no-cache`. Prints the wall time of each and uncached/cached, the script's phases in each
//! (from its `== [Ns]` lines: what a cache can save and what it cannot), ccache's hits, the
//! cache's size, and whether the three .debs are byte-identical; exits non-zero if they differ.
//! Beside each wall time, the host's mean load average: under TCG a build is CPU-bound, so a
//! busy host (another build, a test suite) stretches it more than any cache saves.
//!
//! `cargo bench --bench cache` (as root, with the guest's Debian mirror reachable; bakes
//! runner's image on first use; under TCG on 2 cores the three builds take ~40 minutes).
//! Env: `RUNNER_CACHE_DIR` (the image, and the caches, which live beside it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TARGET: &str = "hello-deb";

/// One build's figures.
struct Build {
    wall: f64,
    /// The host's mean 1-minute load average meanwhile: the build's own 2 vCPUs make ~2, so
    /// much more says something else competed for the cores and the wall time is inflated.
    load: f64,
    deb: String,
    hits: String,
    /// (phase, seconds) in the order the script ran them; a dpkg-buildpackage step is indented.
    phases: Vec<(String, f64)>,
}

fn main() -> ExitCode {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proj = tempfile::tempdir().unwrap();
    copy_dir(&repo.join("examples/hello-deb"), proj.path());
    // A private state dir: the bench reads its target's log, which no other run may overwrite.
    let state = tempfile::tempdir().unwrap();
    // RUNNER_CACHE_DIR, when set, reaches runner through the inherited environment.
    let runner = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.arg("-C")
            .arg(proj.path())
            .env("RUNNER_STATE_DIR", state.path())
            .args(["--accel", "tcg"])
            .args(args);
        c
    };
    // Outside the figures: the image bake, and the warm-start snapshot of this builder's
    // memory size, which the first machine would otherwise make.
    for args in [
        &["image", "build", "bookworm"][..],
        &["vm", "run", "bookworm", "--", "true"],
    ] {
        assert!(runner(args).status().unwrap().success(), "runner {args:?}");
    }
    // A cache of an earlier run would make the first build a warm one; none is no failure.
    let _ = runner(&["cache", "rm", TARGET])
        .stderr(Stdio::null())
        .status();

    let log = state.path().join(format!("logs/builds/{TARGET}.log"));
    let artifacts = proj.path().join("artifacts").join(TARGET);
    let build = |what: &str, extra: &[&str]| {
        eprintln!("== {what}");
        let mut c = runner(&["build", "--force"]);
        c.args(extra).arg(TARGET).stdout(Stdio::null());
        let t = Instant::now();
        let (status, load) = with_load(|| c.status().expect("runner"));
        assert!(status.success(), "{what} failed");
        let wall = t.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&log).expect("the target's log");
        Build {
            wall,
            load,
            deb: deb_sha256(&artifacts),
            hits: hits(&text),
            phases: phases(&text),
        }
    };
    let first = build("first build (empty cache)", &[]);
    let cached = build("second build (warm cache)", &[]);
    let uncached = build("second build, --no-cache", &["--no-cache"]);

    let same = report(&[
        ("first (empty cache)", &first),
        ("second (warm cache)", &cached),
        ("second, --no-cache", &uncached),
    ]);
    print_cache_size(runner(&["--message-format", "json", "cache", "ls"]));
    let verdict = if same { "yes" } else { "NO" };
    println!("  .debs byte-identical across the three: {verdict}");
    // Returned, not `exit`ed: the temporary project and state dirs are removed on the way.
    if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints the three builds side by side (first, cached, uncached); whether their .debs match.
fn report(builds: &[(&str, &Build); 3]) -> bool {
    let [(_, first), (_, cached), (_, uncached)] = builds;
    println!("GNU hello's Debian package (examples/hello-deb), fresh TCG machine each:");
    println!(
        "  {:<22} {:>9} {:>5}  {:<10} .deb sha256",
        "build", "wall", "load", "ccache hits"
    );
    for (name, b) in builds {
        println!(
            "  {name:<22} {:>7.1} s {:>5.1}  {:<10} {}",
            b.wall, b.load, b.hits, b.deb
        );
    }
    let ratio = uncached.wall / cached.wall;
    println!(
        "  uncached/cached: {ratio:.2}x (goal >= 3x: {}), first/cached: {:.2}x",
        if ratio >= 3.0 { "met" } else { "not met" },
        first.wall / cached.wall
    );
    print_phases(builds);
    first.deb == cached.deb && cached.deb == uncached.deb
}

/// The script's phases, side by side: where each build spent its time.
fn print_phases(builds: &[(&str, &Build)]) {
    println!(
        "  {:<48}{:>8}{:>8}{:>8}",
        "the script's phases (s)", "first", "cached", "uncached"
    );
    let by_name: Vec<HashMap<&str, f64>> = builds
        .iter()
        .map(|(_, b)| b.phases.iter().map(|(p, s)| (p.as_str(), *s)).collect())
        .collect();
    for (phase, _) in &builds[0].1.phases {
        let cell = |m: &HashMap<&str, f64>| m.get(phase.as_str()).map(|s| format!("{s:8.0}"));
        let cells: String = by_name
            .iter()
            .map(|m| cell(m).unwrap_or("       -".into()))
            .collect();
        let name: String = phase.chars().take(46).collect();
        println!("    {name:<46}{cells}");
    }
}

/// The target's cache as `runner cache ls` reports it: its newest generation (what the next
/// build reads) and every generation kept.
fn print_cache_size(mut ls: Command) {
    let out = ls.output().expect("runner cache ls");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cache ls JSON");
    let caches = doc["caches"].as_array().cloned().unwrap_or_default();
    let ours = caches.iter().filter(|c| c["about"]["name"] == TARGET);
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    for c in ours {
        let gens = c["generations"].as_array().cloned().unwrap_or_default();
        let newest = gens.last().cloned().unwrap_or_default();
        println!(
            "  cache {}: generation {} {:.1} MiB ({} kept, {:.1} MiB in all)",
            c["key"].as_str().unwrap_or("?"),
            newest[0],
            mib(&newest[1]),
            gens.len(),
            mib(&c["bytes"])
        );
    }
}

/// Runs `f`, sampling the host's 1-minute load average every 5 s meanwhile; its mean.
fn with_load<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = vec![];
            while !done.load(Ordering::Relaxed) {
                let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                samples.extend(
                    avg.split_whitespace()
                        .next()
                        .and_then(|l| l.parse::<f64>().ok()),
                );
                std::thread::park_timeout(Duration::from_secs(5));
            }
            samples.iter().sum::<f64>() / samples.len().max(1) as f64
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        sampler.thread().unpark();
        (out, sampler.join().unwrap())
    })
}

/// The sha256 of the .deb a build published (`artifacts = ["hello_*.deb"]`: one), from its `SHA256SUMS`.
fn deb_sha256(artifacts: &Path) -> String {
    let sums = std::fs::read_to_string(artifacts.join("SHA256SUMS")).expect("SHA256SUMS");
    let deb = sums.lines().find(|l| l.ends_with(".deb")).expect("a .deb");
    deb.split_whitespace().next().unwrap_or_default().to_owned()
}

/// ccache's `Hits:` line of `ccache -s`, printed by the script after the build.
fn hits(log: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("Hits:"))
        .map_or("?".into(), |h| {
            let h = h.split('(').next().unwrap_or(h);
            h.split_whitespace().collect::<Vec<_>>().join(" ")
        })
}

/// The script's `== [Ns] phase` lines as (phase, duration until the next), and its
/// `  +Ns step (file)` lines (when each dpkg-buildpackage step ended) as indented durations.
fn phases(log: &str) -> Vec<(String, f64)> {
    let secs = |s: &str| s.strip_suffix('s')?.parse::<f64>().ok();
    let mut marks: Vec<(bool, String, f64)> = vec![];
    for line in log.lines() {
        let (phase, rest) = match line.strip_prefix("== [") {
            Some(r) => (true, r.replacen("] ", " ", 1)),
            None => match line.strip_prefix("  +") {
                Some(r) => (false, r.split(" (").next().unwrap_or(r).to_owned()),
                None => continue,
            },
        };
        if let Some((at, name)) = rest.split_once(' ')
            && let Some(at) = secs(at)
        {
            marks.push((phase, name.to_owned(), at));
        }
    }
    let mut out = vec![];
    let mut step_began = 0.0;
    for (i, (phase, name, at)) in marks.iter().enumerate() {
        if !phase {
            out.push((format!("  {name}"), at - step_began));
            step_began = *at;
        } else if let Some((_, _, next)) = marks[i + 1..].iter().find(|m| m.0) {
            out.push((name.clone(), next - at));
            step_began = 0.0;
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
