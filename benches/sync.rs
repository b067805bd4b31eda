//! Context into one TCG guest, side by side on the same VM: runner's attached pack (a
//! read-only disk under an overlay), runner's pack streamed over SSH, OpenSSH `tar | ssh`,
//! and `rsync -a` over OpenSSH, for a 4,320-file source tree and 134 MB of random data.
//!
//! `cargo bench --bench sync` (as root). Env: `BENCH_RUNS` (default 3), `RUNNER_CACHE_DIR`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use runner::config::Builder;
use runner::context::{Context, ContextOptions, pack};
use runner::guest::Delivery;
use runner::logs::LogSink;
use runner::machine::{self, AccelChoice, Disk, MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

const BUILDER: &str = "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
                       arch = \"amd64\"\npackages = [\"rsync\"]\n";

fn main() {
    let runs: usize = env_or("BENCH_RUNS", 3);
    let work = tempfile::tempdir().unwrap();
    let random = work.path().join("random");
    std::fs::create_dir_all(&random).unwrap();
    for i in 0..8 {
        let mut f = std::fs::File::create(random.join(format!("blob{i}"))).unwrap();
        std::io::copy(
            &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 16 << 20),
            &mut f,
        )
        .unwrap();
    }
    let tree = work.path().join("tree");
    source_tree(&tree, 4320);
    std::fs::create_dir_all(work.path().join("builders")).unwrap();
    std::fs::write(work.path().join("builders/bench-sync.toml"), BUILDER).unwrap();

    let dirs = Dirs::resolve(
        std::env::var_os("RUNNER_CACHE_DIR").map(PathBuf::from),
        Some(work.path().join("state")),
    );
    let contexts = [("source tree", &tree), ("random data", &random)];
    let mut packs = vec![];
    for (label, dir) in contexts {
        let ctx = Context::scan(&ContextOptions {
            root: dir.clone(),
            exclude: vec![],
        })
        .unwrap();
        let digest = ctx.digest().unwrap();
        let t = Instant::now();
        let p = pack::ensure(&dirs.cache, &ctx, &digest, 0).unwrap();
        let files = ctx.entries().len();
        eprintln!(
            "{label}: packed in {:.2}s (made: {})",
            t.elapsed().as_secs_f64(),
            p.made
        );
        packs.push((label, dir, p, files, t.elapsed().as_secs_f64()));
    }

    let machines = Machines::new(
        &dirs,
        Settings {
            accel: AccelChoice::Tcg,
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let builder = Builder::find(work.path(), "bench-sync").unwrap();
    let backend = machines.backend(&builder);
    rt.block_on(backend.prepare(&Report::Lines)).unwrap();
    let spec = MachineSpec {
        disks: packs
            .iter()
            .enumerate()
            .map(|(n, (_, _, p, _, _))| Disk {
                path: p.image.clone(),
                serial: serial(n),
            })
            .collect(),
        ..MachineSpec::of(&builder, "bench-sync")
    };
    let lease = rt
        .block_on(machine::lease(backend.as_ref(), &spec, &Default::default()))
        .unwrap();
    let access = lease.ssh_access(work.path()).unwrap();
    let log = LogSink::create(&work.path().join("sync.log"), 1 << 20, |_| {}).unwrap();

    println!("context into one TCG guest (bookworm, q35, qemu64), best of {runs}:");
    for (n, (label, dir, p, files, pack_s)) in packs.iter().enumerate() {
        let serial = serial(n);
        let mut best = [f64::MAX; 4];
        for _ in 0..runs {
            let sides: [&dyn Fn(); 4] = [
                &|| {
                    rt.block_on(
                        lease
                            .guest
                            .deliver(&Delivery::Attached { serial: &serial }, &log),
                    )
                    .unwrap()
                },
                &|| {
                    let how = Delivery::Streamed {
                        tar: &p.tar,
                        compress: false,
                    };
                    rt.block_on(lease.guest.deliver(&how, &log)).unwrap()
                },
                &|| openssh_tar(dir, &access.ssh_args()),
                &|| rsync(dir, &access),
            ];
            // Interleaved, so drift in machine load hits every side alike; each starts from
            // an empty /build (removing another side's 4,320 files is not its cost).
            for (b, side) in best.iter_mut().zip(sides) {
                reset(&access.ssh_args());
                let t = Instant::now();
                side();
                *b = b.min(t.elapsed().as_secs_f64());
            }
        }
        let mb = p.tar_bytes as f64 / 1e6;
        let [attach, stream, ssh, rs] = best;
        println!("  {label}: {files} entries, {mb:.1} MB (tar); packing it once took {pack_s:.1}s");
        println!(
            "    runner, attached pack      {attach:>7.2}s   {:>5.1}x OpenSSH",
            ssh / attach
        );
        println!(
            "    runner, pack over SSH      {stream:>7.2}s   {:>5.1}x OpenSSH",
            ssh / stream
        );
        println!("    OpenSSH tar | ssh          {ssh:>7.2}s");
        println!(
            "    rsync -a over OpenSSH      {rs:>7.2}s   {:>5.1}x OpenSSH",
            ssh / rs
        );
    }
    rt.block_on(lease.release(false)).unwrap();
}

fn reset(ssh: &[String]) {
    sh(&format!(
        "ssh -o BatchMode=yes {} 'umount /build/src /build/.ctx 2>/dev/null; rm -rf /build; mkdir -p /build'",
        ssh.join(" ")
    ));
}

fn openssh_tar(dir: &Path, ssh: &[String]) {
    let cmd = format!(
        "tar -C {} -cf - . | ssh -o BatchMode=yes {} 'umount /build/src /build/.ctx 2>/dev/null; rm -rf /build/ssh && mkdir -p /build/ssh && tar -x -C /build/ssh'",
        dir.display(),
        ssh.join(" ")
    );
    sh(&cmd);
}

fn rsync(dir: &Path, access: &runner::machine::dir::SshAccess) {
    let ssh = access.ssh_args();
    let (dest, opts) = ssh.split_last().unwrap();
    let remote_sh = format!("ssh -o BatchMode=yes {}", opts.join(" "));
    let cmd = format!(
        "ssh -o BatchMode=yes {} 'rm -rf /build/rsync' && rsync -a -e '{remote_sh}' {}/ {dest}:/build/rsync/",
        ssh.join(" "),
        dir.display()
    );
    sh(&cmd);
}

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "baseline failed: {cmd}");
}

/// A source-like tree: many small text files in nested directories.
fn source_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("mod{}/sub{}", i % 40, i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let body: String = (0..(i % 50 + 10))
            .map(|l| format!("line {l} of file {i}: some source text\n"))
            .collect();
        std::fs::write(dir.join(format!("file{i}.c")), body).unwrap();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first disk goes into the machine's context slot, whose serial is fixed (as a run's
/// pack is); the others are extra disks with their own.
fn serial(n: usize) -> String {
    if n == 0 {
        "runner-ctx".into()
    } else {
        format!("ctx{n}")
    }
}
