//! Build caches on a real workload: GNU hello's Debian package built from the Debian source
//! archive (examples/hello-deb: deb-src, `apt-get build-dep`, `apt-get source`,
//! `dpkg-buildpackage` under ccache) with apt's archives and lists and ccache's directory
//! cached. Side by side in one run, each `runner build --force` in a fresh TCG machine of a
//! new project: a first build (an empty cache), a second with the cache the first left, a
//! third with `--no-cache`. Prints the wall time of each and uncached/cached, the script's
//! phases in each (its `== [Ns]` lines: what a cache saves and what it cannot), ccache's hits,
//! the cache's size, and whether the three .debs are byte-identical (exits non-zero if not).
//! Beside each wall time, the host's mean load average: under TCG a build is CPU-bound, so a
//! busy host (another build, a test suite) stretches it more than any cache saves.
//!
//! `cargo bench --bench cache` (as root, with the guest's Debian mirror reachable; bakes
//! runner's image on first use; under TCG on 2 cores the three builds take ~25 minutes).
//! Env: `RUNNER_CACHE_DIR` (the image, and the caches beside it; the bench's is removed).

use std::path::Path;
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
    /// The cache key and generation the machine read (from runner's `cache:` note); `None`
    /// without a cache.
    read: Option<(String, u64)>,
    /// (phase, seconds) in the order the script ran them; a dpkg-buildpackage step is indented.
    phases: Vec<(String, f64)>,
}

/// The bench's temporary copy of examples/hello-deb and its private state dir (the bench
/// reads its target's log, which no other run may overwrite meanwhile).
struct Bench {
    proj: tempfile::TempDir,
    state: tempfile::TempDir,
}

fn main() -> ExitCode {
    let (proj, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let example = format!("{}/examples/hello-deb/.", env!("CARGO_MANIFEST_DIR"));
    let to = proj.path().display().to_string();
    let copied = Command::new("cp").args(["-a", &example, &to]).status();
    assert!(copied.unwrap().success(), "copying examples/hello-deb");
    let bench = Bench { proj, state };
    // Outside the figures: the image bake, and the warm-start snapshot of this builder's
    // memory size, which the first machine would otherwise make.
    bench.must(&["image", "build", "bookworm"]);
    bench.must(&["vm", "run", "bookworm", "--", "true"]);
    let first = bench.build("first build (empty cache)", &[]);
    let cached = bench.build("second build (warm cache)", &[]);
    let uncached = bench.build("second build, --no-cache", &["--no-cache"]);
    // A cache belongs to its project, and this one is new: the first build starts empty, the
    // second reads what the first saved, the third none.
    let reads = [&first, &cached, &uncached].map(|b| b.read.as_ref().map(|r| r.1));
    assert_eq!(reads, [Some(0), Some(1), None], "generations read");
    let key = first.read.clone().unwrap().0;

    let same = report(&[
        ("first (empty cache)", &first),
        ("second (warm cache)", &cached),
        ("second, --no-cache", &uncached),
    ]);
    print_cache_size(&bench, &key);
    // Hundreds of MiB no later run can use (their project directories differ): removed.
    let _ = bench.runner(&["cache", "rm", &key]).output();
    let verdict = if same { "yes" } else { "NO" };
    println!("  .debs byte-identical across the three: {verdict}");
    // Returned, not `exit`ed: the temporary project and state dirs are removed on the way.
    ExitCode::from(u8::from(!same))
}

impl Bench {
    /// runner on the bench's project; RUNNER_CACHE_DIR, when set, passes through the
    /// inherited environment.
    fn runner(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.arg("-C").arg(self.proj.path());
        c.env("RUNNER_STATE_DIR", self.state.path());
        c.args(["--accel", "tcg"]).args(args);
        c
    }

    fn must(&self, args: &[&str]) {
        assert!(
            self.runner(args).status().unwrap().success(),
            "runner {args:?}"
        );
    }

    /// `runner build --force` of the target, with `extra` flags (which must succeed).
    fn build(&self, what: &str, extra: &[&str]) -> Build {
        eprintln!("== {what}");
        let mut c = self.runner(&["build", "--force"]);
        c.args(extra).arg(TARGET).stdout(Stdio::null());
        let t = Instant::now();
        let (status, load) = with_load(|| c.status().expect("runner"));
        assert!(status.success(), "{what} failed");
        let wall = t.elapsed().as_secs_f64();
        let log = self.state.path().join(format!("logs/builds/{TARGET}.log"));
        let text = std::fs::read_to_string(log).expect("the target's log");
        let artifacts = self.proj.path().join("artifacts").join(TARGET);
        Build {
            wall,
            load,
            deb: deb_sha256(&artifacts),
            hits: hits(&text),
            read: cache_read(&text),
            phases: phases(&text),
        }
    }
}

/// Prints the three builds side by side (first, cached, uncached); whether their .debs match.
fn report(builds: &[(&str, &Build); 3]) -> bool {
    let [(_, first), (_, cached), (_, uncached)] = builds;
    println!("GNU hello's Debian package (examples/hello-deb), fresh TCG machine each:");
    println!(
        "  {:<22} {:>9} {:>5} {:>6}  {:<11} .deb sha256",
        "build", "wall", "load", "cache", "ccache hits"
    );
    for (name, b) in builds {
        let read = b.read.as_ref().map(|r| format!("gen {}", r.1));
        let read = read.unwrap_or("none".into());
        println!(
            "  {name:<22} {:>7.1} s {:>5.1} {read:>6}  {:<11} {}",
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
        "  {:<48}{:>10}{:>10}{:>10}",
        "the script's phases (s)", "first", "cached", "uncached"
    );
    // Row by row: every build ran the same script, so the same phases in the same order.
    for (i, (phase, _)) in builds[0].1.phases.iter().enumerate() {
        let secs = |b: &Build| b.phases.get(i).map_or(f64::NAN, |p| p.1);
        let cells: String = builds
            .iter()
            .map(|(_, b)| format!("{:>10.0}", secs(b)))
            .collect();
        let name: String = phase.chars().take(46).collect();
        println!("    {name:<46}{cells}");
    }
}

/// The cache `key` as `runner cache ls` reports it: its newest generation (what the next build
/// reads) and every generation kept.
fn print_cache_size(bench: &Bench, key: &str) {
    let out = bench
        .runner(&["--message-format", "json", "cache", "ls"])
        .output();
    let doc: serde_json::Value = serde_json::from_slice(&out.unwrap().stdout).expect("JSON");
    let entry = doc["caches"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["key"] == key);
    let gens = entry
        .and_then(|c| c["generations"].as_array())
        .expect("the cache listed");
    let mib = |g: &serde_json::Value| g[1].as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    let newest = gens.last().expect("a generation");
    let all: f64 = gens.iter().map(mib).sum();
    let kept = gens.len();
    println!(
        "  cache {key}: generation {} {:.1} MiB ({kept} kept, {all:.1} MiB in all)",
        newest[0],
        mib(newest)
    );
}

/// Runs `f`, sampling the host's 1-minute load average every 5 s meanwhile; its mean.
fn with_load<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = vec![];
            while !done.load(Ordering::Relaxed) {
                let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                let one_minute = avg.split(' ').next().and_then(|l| l.parse().ok());
                samples.extend::<Option<f64>>(one_minute);
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

/// The key and generation of runner's `cache: <key> generation <n> (sha256 …)` note.
fn cache_read(log: &str) -> Option<(String, u64)> {
    log.lines().find_map(|l| {
        let (key, rest) = l.split_once("cache: ")?.1.split_once(" generation ")?;
        Some((key.to_owned(), rest.split(' ').next()?.parse().ok()?))
    })
}

/// The script's `== [Ns] phase` lines as (phase, duration until the next), and its
/// `  +Ns step (file)` lines (when each dpkg-buildpackage step ended) as indented durations.
fn phases(log: &str) -> Vec<(String, f64)> {
    // (is a phase, name, seconds since the script or dpkg-buildpackage started)
    let mark = |line: &str| -> Option<(bool, String, f64)> {
        let (phase, rest) = match line.strip_prefix("== [") {
            Some(r) => (true, r.replacen("] ", " ", 1)),
            None => (
                false,
                line.strip_prefix("  +")?.split(" (").next()?.to_owned(),
            ),
        };
        let (at, name) = rest.split_once(' ')?;
        Some((phase, name.to_owned(), at.strip_suffix('s')?.parse().ok()?))
    };
    let marks: Vec<_> = log.lines().filter_map(mark).collect();
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
