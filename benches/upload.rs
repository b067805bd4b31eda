//! S3 upload throughput: runner's uploader (multipart, 8 MiB parts, 4 in parallel, SHA-256
//! per part checked by the server) against `aws s3 cp` (awscli), the same file to the same
//! Garage server on loopback, runs interleaved so machine load hits both alike.
//!
//! `cargo bench --bench upload`. Needs `aws` on PATH (`pip install awscli`) and Garage
//! (`scripts/garage-server install`). Env: `BENCH_MIB` (file size, default 1024),
//! `BENCH_RUNS` (default 2).

#[path = "../tests/common/garage.rs"]
mod garage;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use runner::paths::Dirs;
use runner::store::s3::{S3Store, S3Url, Settings};

fn main() {
    let mib: u64 = env_or("BENCH_MIB", 1024);
    let runs: usize = env_or("BENCH_RUNS", 2);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("artifact.bin");
    let mut f = std::fs::File::create(&file).unwrap();
    std::io::copy(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), mib << 20),
        &mut f,
    )
    .unwrap();
    drop(f);

    let server = garage::Garage::start();
    let dirs = Dirs::resolve(None, Some(work.path().join("state")));
    let settings = Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
    };
    // SAFETY: set before any thread reads the environment (the runtime starts below).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", garage::KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", garage::SECRET);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = S3Url {
        bucket: garage::BUCKET.into(),
        prefix: String::new(),
    };
    let store = rt.block_on(S3Store::connect(url, &settings, &dirs));

    let (mut ours, mut theirs) = (vec![], vec![]);
    for i in 0..runs {
        let t = Instant::now();
        let sent = rt
            .block_on(store.upload_file(&file, &format!("runner-{i}")))
            .expect("runner upload");
        ours.push(t.elapsed());
        assert_eq!(sent, mib << 20);

        let t = Instant::now();
        aws_cp(
            &server,
            &file,
            &format!("s3://{}/awscli-{i}", garage::BUCKET),
        );
        theirs.push(t.elapsed());
    }
    let sizes = server.objects();
    assert!(
        sizes.iter().all(|(_, s)| *s as u64 == mib << 20),
        "{sizes:?}"
    );

    let rate = |d: &Duration| mib as f64 / d.as_secs_f64();
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    println!("upload of {mib} MiB to Garage on loopback, {runs} interleaved run(s):");
    for (name, v) in [("runner", &ours), ("aws s3 cp", &theirs)] {
        let all: Vec<String> = v.iter().map(|d| format!("{:.1}", rate(d))).collect();
        println!(
            "  {name:<10} best {:>7.1} MiB/s  (runs: {} MiB/s)",
            rate(&best(v)),
            all.join(", ")
        );
    }
    println!(
        "  ratio runner / aws s3 cp (best runs): {:.2}x",
        rate(&best(&ours)) / rate(&best(&theirs))
    );
}

fn aws_cp(server: &garage::Garage, file: &Path, dest: &str) {
    let out = Command::new("aws")
        .args([
            "s3",
            "cp",
            "--only-show-errors",
            "--endpoint-url",
            &server.endpoint(),
        ])
        .arg(file)
        .arg(dest)
        .env("AWS_ACCESS_KEY_ID", garage::KEY)
        .env("AWS_SECRET_ACCESS_KEY", garage::SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .output()
        .expect("run `aws` (pip install awscli)");
    assert!(
        out.status.success(),
        "aws s3 cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
