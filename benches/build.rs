//! `runner build` of a trivial target against a bare shell pipeline (qemu + ssh + tar, see
//! bare-build.sh) on the same image, interleaved in one run: runner's overhead end to end.
//!
//! `cargo bench --bench build` (as root). Env: `BENCH_RUNS` (default 3), `RUNNER_CACHE_DIR`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use runner::config::BackendConfig;
use runner::config::Builder;
use runner::machine::qemu::image::{Cache, Recipe};
use runner::paths::Dirs;

const SCRIPT: &str = "#!/bin/sh\nset -e\nls -R . > \"$RUNNER_OUT/listing.txt\"\necho built > \"$RUNNER_OUT/result.txt\"\n";

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("RUNNER_CACHE_DIR").map(PathBuf::from);
    let dirs = Dirs::resolve(cache.clone(), None);

    let proj = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proj.path().join("builders")).unwrap();
    std::fs::copy(
        repo.join("builders/bookworm-amd64.toml"),
        proj.path().join("builders/bookworm-amd64.toml"),
    )
    .unwrap();
    std::fs::write(proj.path().join("build.sh"), SCRIPT).unwrap();
    std::fs::write(
        proj.path().join("runner.toml"),
        "[target.trivial]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(proj.path().join("src")).unwrap();
    std::fs::write(
        proj.path().join("src/main.c"),
        "int main(void) { return 0; }\n",
    )
    .unwrap();

    let runner = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.arg("-C")
            .arg(proj.path())
            .args(["--accel", "tcg"])
            .args(args);
        if let Some(dir) = &cache {
            c.env("RUNNER_CACHE_DIR", dir);
        }
        c
    };
    assert!(
        runner(&["image", "build", "bookworm-amd64"])
            .status()
            .unwrap()
            .success()
    );
    let builder = Builder::find(proj.path(), "bookworm-amd64").unwrap();
    let BackendConfig::Qemu(q) = &builder.backend else {
        unreachable!("a QEMU builder")
    };
    let image = Cache::new(&dirs)
        .lookup(&Recipe::of(q, |_| unreachable!("a Debian builder")).digest())
        .expect("baked image");

    let (mut ours, mut bare) = (vec![], vec![]);
    for i in 0..runs {
        let t = Instant::now();
        let ok = runner(&["build", "trivial"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "runner build failed");
        ours.push(t.elapsed());

        let out = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let ok = Command::new("bash")
            .arg(repo.join("benches/bare-build.sh"))
            .arg(&image.dir)
            .arg(proj.path())
            .arg(proj.path().join("build.sh"))
            .arg(out.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "bare pipeline failed");
        bare.push(t.elapsed());
        eprintln!(
            "run {}: runner {:.2}s, bare {:.2}s",
            i + 1,
            ours[i].as_secs_f64(),
            bare[i].as_secs_f64()
        );
    }
    let (o, b) = (median(&mut ours), median(&mut bare));
    println!("trivial build, fresh TCG VM each (bookworm-amd64), median of {runs}:");
    println!("  runner build (boot, sync, provision, collect, publish, teardown): {o:>6.2} s");
    println!("  bare qemu + ssh + tar pipeline on the same image:                 {b:>6.2} s");
    println!("  runner/bare: {:.2}x", o / b);
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}
