//! Context upload throughput: runner's deterministic tar over russh against OpenSSH
//! `tar | ssh` into the same running VM, for incompressible data and for a source tree.
//!
//! `cargo bench --bench sync` (as root). Env: `BENCH_MIB` (incompressible size, default 128),
//! `BENCH_RUNS` (default 2), `RUNNER_CACHE_DIR`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use runner::config::Builder;
use runner::context::{Context, ContextOptions};
use runner::guest::keys::openssh_public;
use runner::logs::LogSink;
use runner::machine::{self, AccelChoice, MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

fn main() {
    let mib: usize = env_or("BENCH_MIB", 128);
    let runs: usize = env_or("BENCH_RUNS", 2);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let random = work.path().join("random");
    std::fs::create_dir_all(&random).unwrap();
    for i in 0..mib / 16 {
        let mut f = std::fs::File::create(random.join(format!("blob{i}"))).unwrap();
        std::io::copy(
            &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 16 << 20),
            &mut f,
        )
        .unwrap();
    }
    let tree = work.path().join("tree");
    source_tree(&tree, 4000);

    let dirs = Dirs::resolve(
        std::env::var_os("RUNNER_CACHE_DIR").map(PathBuf::from),
        Some(work.path().join("state")),
    );
    let machines = Machines::new(
        &dirs,
        Settings {
            accel: AccelChoice::Tcg,
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let builder = Builder::find(&repo, "bookworm-amd64").unwrap();
    let backend = machines.backend(&builder);
    rt.block_on(backend.prepare(&Report::Lines)).unwrap();
    let lease = rt
        .block_on(machine::lease(
            backend.as_ref(),
            &MachineSpec::of(&builder, "bench-sync"),
            &Default::default(),
        ))
        .unwrap();

    // OpenSSH gets the same VM, the same pinned host key and the same client key.
    let key = work.path().join("id");
    write_0600(
        &key,
        lease.keys.client_private_openssh().unwrap().as_bytes(),
    );
    let known = work.path().join("known_hosts");
    let ep = lease.machine.endpoint.clone();
    write_0600(
        &known,
        format!(
            "[{}]:{} {}\n",
            ep.host,
            ep.port,
            openssh_public(lease.keys.host_public())
        )
        .as_bytes(),
    );
    let log = LogSink::create(&work.path().join("sync.log"), 1 << 20, |_| {}).unwrap();

    println!("context upload into one TCG guest (bookworm-amd64, q35, qemu64), best of {runs}:");
    for (label, dir) in [("incompressible", &random), ("source tree", &tree)] {
        let ctx = Arc::new(
            Context::scan(&ContextOptions {
                root: dir.clone(),
                exclude: vec![],
            })
            .unwrap(),
        );
        let bytes: u64 = ctx
            .entries()
            .iter()
            .map(|e| match e.kind {
                runner::context::EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        let (mut ours, mut theirs) = (f64::MAX, f64::MAX);
        for _ in 0..runs {
            let t = Instant::now();
            rt.block_on(lease.guest.sync(ctx.clone(), 0, &log)).unwrap();
            ours = ours.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            openssh_tar(dir, &key, &known, ep.port);
            theirs = theirs.min(t.elapsed().as_secs_f64());
        }
        let mb = bytes as f64 / 1e6;
        println!(
            "  {label:<15} {:>7.1} MB, {:>6} files: runner {:>6.1} MB/s ({ours:.1}s), OpenSSH tar|ssh {:>6.1} MB/s ({theirs:.1}s), ratio {:.2}x",
            mb,
            ctx.entries().len(),
            mb / ours,
            mb / theirs,
            theirs / ours
        );
    }
    rt.block_on(lease.release(false)).unwrap();
}

fn openssh_tar(dir: &Path, key: &Path, known: &Path, port: u16) {
    let cmd = format!(
        "tar -C {} -cf - . | ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {port} root@127.0.0.1 'rm -rf /build/src && mkdir -p /build/src && tar -x -C /build/src'",
        dir.display(),
        key.display(),
        known.display()
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "OpenSSH baseline failed");
}

/// A source-like tree: many small text files in nested directories.
fn source_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("mod{}/sub{}", i % 40, i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let body: String = (0..(i % 50 + 10))
            .map(|l| format!("fn item_{i}_{l}() -> u32 {{ {l} * {i} }}\n"))
            .collect();
        std::fs::write(dir.join(format!("file{i}.rs")), body).unwrap();
    }
}

fn write_0600(path: &Path, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
