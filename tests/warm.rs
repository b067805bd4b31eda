//! Warm starts: machines restored from one snapshot, each with its own identity; damaged and
//! stale snapshots; interruptions mid-restore and mid-snapshot.
//!
//! Each test uses its own machine shape (memory), so its snapshot is its own while the image
//! (whose recipe has no shape) is the shared, already baked bookworm-amd64.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// A bookworm-amd64 builder with `memory`, in its own project.
fn world_with_memory(memory: &str) -> (tempfile::TempDir, World, PathBuf) {
    let text = std::fs::read_to_string(repo().join("builders/bookworm-amd64.toml"))
        .unwrap()
        .replace("memory = \"1G\"", &format!("memory = \"{memory}\""));
    assert!(text.contains(memory));
    world_of(&text)
}

/// The systemd builder of `tests/guest.rs` (so the image is the same), with `memory`.
fn systemd_world(memory: &str) -> (tempfile::TempDir, World, PathBuf) {
    world_of(&format!(
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
         arch = \"amd64\"\ninit = \"systemd\"\nmemory = \"{memory}\"\n"
    ))
}

/// A project whose one builder, `shaped`, is `text`; its image built.
fn world_of(text: &str) -> (tempfile::TempDir, World, PathBuf) {
    let project = project_with(&[("shaped", text)]);
    let world = World::with_project(project.path().to_owned());
    let built = world.run(&["image", "build", "shaped"]);
    assert!(built.status.success());
    // `name  digest  baked|cached in …  <image directory>`
    let image = stdout(&built)
        .trim()
        .rsplit('\t')
        .next()
        .map(PathBuf::from)
        .expect("the image's directory");
    (project, world, image)
}

/// The snapshot directories of `image` made for machines of `memory_mib` (other images in a
/// long-lived cache may have their own).
fn snapshots_of(image: &Path, memory_mib: u64) -> Vec<PathBuf> {
    let mut out = vec![];
    {
        let Ok(rd) = std::fs::read_dir(image.join("snapshots")) else {
            return out;
        };
        for dir in rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let key: serde_json::Value = std::fs::read(dir.join("snapshot.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if key["memory_mib"] == memory_mib || dir.join("state.part").exists() {
                out.push(dir);
            }
        }
    }
    out
}

/// The snapshot a machine was restored from (or made for it), as its `-v` log names it:
/// other snapshots of the same memory may be in a long-lived cache (made for another QEMU or
/// command line), so a test never picks one by its shape.
fn snapshot_used(log: &str, image: &Path) -> PathBuf {
    let id = ["warm (snapshot ", "making a warm-start snapshot ("]
        .iter()
        .find_map(|m| log.split(m).nth(1)?.split(')').next())
        .unwrap_or_else(|| panic!("no snapshot named in: {log}"));
    image.join("snapshots").join(id)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What a machine says about itself, and how far its clock was from the host's when the
/// line arrived.
struct Identity {
    host_key: String,
    machine_id: String,
    random: String,
    uuid: String,
    boot_id: String,
    clock_skew: f64,
    log: String,
    /// Everything the command printed.
    stdout: String,
}

// The kernel's uuid first: its first read after the restore, before anything else draws.
const SELF_REPORT: &str = "u=$(cat /proc/sys/kernel/random/uuid); \
    echo id $(sha256sum < /run/runner/ssh_host_ed25519_key) \
    $(cat /etc/machine-id) $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n') $u \
    $(cat /proc/sys/kernel/random/boot_id) $(date +%s.%N)";

fn identity(world: &World) -> Identity {
    identity_with(
        world,
        &[],
        &format!("echo hostname $(hostname); {SELF_REPORT}"),
    )
}

/// [`identity`], with runner's `flags` and a command that prints the report line.
fn identity_with(world: &World, flags: &[&str], report: &str) -> Identity {
    let args = [flags, &["-v", "vm", "run", "shaped", "--", report]].concat();
    let mut child = world.spawn(&args);
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let mut got = None;
    let mut said = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        said.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("id ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let skew = now() - f[f.len() - 1].parse::<f64>().unwrap();
            got = Some((
                f[0].to_owned(),
                f[2].to_owned(),
                f[3].to_owned(),
                f[4].to_owned(),
                f[5].to_owned(),
                skew,
            ));
        }
        line.clear();
    }
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    let (host_key, machine_id, random, uuid, boot_id, clock_skew) =
        got.expect("the machine reported itself");
    Identity {
        host_key,
        machine_id,
        random,
        uuid,
        boot_id,
        clock_skew,
        log,
        stdout: said,
    }
}

#[test]
fn machines_restored_from_one_snapshot_each_have_their_own_identity_and_the_clock() {
    let (_p, world, image) = world_with_memory("1280M");
    let first = identity(&world);
    assert!(first.log.contains("warm (snapshot"), "{}", first.log);
    // A machine's memory, saved: the user's alone.
    for snap in snapshots_of(&image, 1280) {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&snap), 0o700, "{}", snap.display());
        assert_eq!(mode(&snap.join("state")), 0o600);
        assert_eq!(mode(&snap.join("snapshot.json")), 0o600);
    }
    // Let the snapshot's clock fall behind, so a clock left as it was would show.
    std::thread::sleep(Duration::from_secs(4));
    let a = identity(&world);
    let b = identity(&world);
    for m in [&a, &b] {
        assert!(m.log.contains("warm (snapshot"), "{}", m.log);
        assert!(
            m.clock_skew.abs() < 2.0,
            "guest clock off by {}s",
            m.clock_skew
        );
    }
    assert_ne!(a.host_key, b.host_key);
    assert_ne!(a.machine_id, b.machine_id);
    assert_ne!(
        line_of(&a.stdout, "hostname "),
        line_of(&b.stdout, "hostname ")
    );
    assert_ne!(a.random, b.random);
    assert_ne!(
        a.uuid, b.uuid,
        "the restored kernels drew the same first uuid"
    );
    // Made on its first read, which the template never did (see README "Warm starts").
    assert_ne!(a.boot_id, b.boot_id);
    assert_eq!(a.machine_id.len(), 32);
    world.assert_clean();
}

/// Waits for systemd to finish starting, lists its failed units (`failed: a b`, sorted) and
/// then reports the machine's identity.
const SYSTEMD_REPORT: &str = "state=$(systemctl is-system-running --wait); \
    echo \"state: $state\"; \
    echo failed: $(systemctl --failed --no-legend --plain | awk '{print $1}' | sort); \
    echo hostname $(hostname)";

/// What a systemd machine said of its health: its state and the units that failed.
fn health(said: &str) -> (String, String) {
    (line_of(said, "state: "), line_of(said, "failed:"))
}

/// The rest of the first line of `said` that starts with `prefix`.
fn line_of(said: &str, prefix: &str) -> String {
    said.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in: {said}"))
        .trim()
        .to_owned()
}

#[test]
fn systemd_machines_restored_from_one_snapshot_are_their_own_and_as_healthy_as_a_cold_one() {
    let (_p, world, image) = systemd_world("1216M");
    // What the system's health is when it boots cold: a warm start may not add to it.
    let report = format!("{SYSTEMD_REPORT}; {SELF_REPORT}");
    let cold = identity_with(&world, &["--cold"], &report);
    assert!(cold.log.contains("cold (--cold)"), "{}", cold.log);
    let (cold_state, cold_failed) = health(&cold.stdout);
    std::thread::sleep(Duration::from_secs(3));
    let a = identity_with(&world, &[], &report);
    let b = identity_with(&world, &[], &report);
    for m in [&a, &b] {
        assert!(m.log.contains("warm (snapshot"), "{}", m.log);
        assert_eq!(
            health(&m.stdout),
            (cold_state.clone(), cold_failed.clone()),
            "a restored systemd machine is not as healthy as a cold one"
        );
        assert!(
            m.clock_skew.abs() < 2.0,
            "guest clock off by {}s",
            m.clock_skew
        );
    }
    assert!(
        cold_state == "running" || cold_state == "degraded",
        "{}",
        cold.stdout
    );
    assert_ne!(a.host_key, b.host_key);
    assert_ne!(a.machine_id, b.machine_id);
    assert_ne!(a.random, b.random);
    assert_ne!(a.uuid, b.uuid);
    assert_ne!(a.boot_id, b.boot_id);
    let hostname = |m: &Identity| line_of(&m.stdout, "hostname ");
    assert_ne!(hostname(&a), hostname(&b));

    // Damaged memory: the guest never takes its seed; the machine boots cold, still healthy.
    let snap = snapshot_used(&a.log, &image);
    cut(&snap.join("ram"), 0);
    let fell_back = identity_with(&world, &[], &report);
    assert!(
        fell_back.log.contains("cold (the warm start failed"),
        "{}",
        fell_back.log
    );
    assert_eq!(health(&fell_back.stdout).0, cold_state);
    world.assert_clean();
}

#[test]
fn a_damaged_or_stale_snapshot_means_a_cold_boot_and_a_new_snapshot() {
    let (_p, world, image) = world_with_memory("1152M");
    // What an earlier, failed run of this test may have left damaged.
    for dir in snapshots_of(&image, 1152) {
        std::fs::remove_dir_all(dir).unwrap();
    }
    let report = |expect: &str| {
        let out = world.run(&["-v", "vm", "run", "shaped", "--", "true"]);
        assert!(out.status.success());
        assert!(stderr(&out).contains(expect), "{}", stderr(&out));
    };
    report("warm (snapshot");
    let snap = snapshots_of(&image, 1152)
        .pop()
        .expect("a snapshot was made");

    // Damaged: QEMU cannot load half a state. The machine boots cold and the snapshot goes.
    let state = snap.join("state");
    cut(&state, std::fs::metadata(&state).unwrap().len() / 2);
    report("cold (the warm start failed");
    assert!(!snap.exists(), "the damaged snapshot was kept");
    report("making a warm-start snapshot");

    // Damaged memory: QEMU loads the devices' state, but the memory file the machines map
    // lost its pages (read as zeros). The guest never takes its seed: cold, and it goes.
    cut(&snap.join("ram"), 0);
    report("cold (the warm start failed");
    assert!(!snap.exists(), "the snapshot with damaged memory was kept");
    report("making a warm-start snapshot");

    // Stale: made by another QEMU (as its key records) — not used, made again.
    let key_file = snap.join("snapshot.json");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&key).unwrap();
    v["qemu"] = "QEMU emulator version 0.0.1".into();
    std::fs::write(&key_file, v.to_string()).unwrap();
    report("making a warm-start snapshot");
    report("warm (snapshot");
    world.assert_clean();
}

/// Damages a snapshot's file: only its first `len` bytes are left.
fn cut(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Waits until `found` says yes, polling fast; panics after `timeout`.
fn poll(what: &str, timeout: Duration, mut found: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !found() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn restoring(state_dir: &Path) -> bool {
    processes_mentioning(state_dir).into_iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(9).any(|w| w == b"-incoming"))
    })
}

#[test]
fn ctrl_c_mid_restore_and_sigkill_mid_snapshot_leave_only_the_cached_snapshot() {
    let (_p, world, image) = world_with_memory("1088M");
    let first = world.run(&["-v", "vm", "run", "shaped", "--", "true"]);
    assert!(first.status.success());
    let snap = snapshot_used(&stderr(&first), &image);

    // Ctrl-C while QEMU loads the snapshot.
    let child = world.spawn(&["vm", "run", "shaped", "--", "sleep 600"]);
    poll("a restore", Duration::from_secs(60), || {
        restoring(world.state.path())
    });
    signal(&child, libc::SIGINT);
    let mut child = child;
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), Some(130));
    world.assert_clean();
    assert!(snap.join("state").is_file() && snap.join("snapshot.json").is_file());

    // SIGKILL while the snapshot is being written: gc removes the template machine and the
    // unfinished state; the next machine makes a whole snapshot.
    std::fs::remove_dir_all(&snap).unwrap();
    let mut child = world.spawn(&["vm", "run", "shaped", "--", "true"]);
    poll("a snapshot being written", Duration::from_secs(180), || {
        snap.join("state.part").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let dry = world.run(&["gc"]);
    assert!(
        stdout(&dry).contains("unfinished snapshot"),
        "{}",
        stdout(&dry)
    );
    assert!(world.run(&["gc", "--force"]).status.success());
    world.assert_clean();
    assert!(
        !snap.join("state.part").exists(),
        "gc left the unfinished snapshot"
    );
    assert!(!snap.join("state").exists());
    assert!(
        world
            .run(&["vm", "run", "shaped", "--", "true"])
            .status
            .success()
    );
    assert!(snap.join("state").is_file());
    world.assert_clean();
}
