//! The machine layer against real QEMU guests booted from images baked by runner.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BOOT: Duration = Duration::from_secs(300);

/// Starts `runner vm run` with a command that runs until killed.
fn sleeper(world: &World) -> std::process::Child {
    bake(world, "bookworm-amd64");
    world.spawn(&[
        "vm",
        "run",
        "bookworm-amd64",
        "--",
        "echo started; sleep 600",
    ])
}

fn bake(world: &World, builder: &str) -> String {
    let out = world.run(&["image", "build", builder]);
    assert!(out.status.success(), "bake of {builder} failed");
    stdout(&out)
}

#[test]
fn bake_boot_run_command_and_cache_hit() {
    let world = World::new();
    bake(&world, "bookworm-amd64");

    // Unchanged recipe: a cache hit, no mmdebstrap.
    let started = Instant::now();
    let second = bake(&world, "bookworm-amd64");
    assert!(
        second.contains("cached"),
        "second bake was not a cache hit: {second}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    let out = world.run(&[
        "vm", "run", "bookworm-amd64", "--",
        "uname -m; cat /etc/debian_version; echo to-stderr >&2; test -s /run/runner/authorized_keys && echo seeded; exit 7",
    ]);
    let so = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "remote exit status must be runner's"
    );
    assert!(so.contains("x86_64"), "{so}");
    assert!(
        so.lines().any(|l| l.starts_with("12.")),
        "not bookworm: {so}"
    );
    assert!(so.contains("seeded"), "{so}");
    assert!(stderr(&out).contains("to-stderr"));
    world.assert_clean();

    // The image lists with its builder and digest, and nothing secret was baked into it.
    let list = world.run(&["image", "list"]);
    assert!(stdout(&list).contains("bookworm-amd64"));
    let out = world.run(&[
        "vm",
        "run",
        "bookworm-amd64",
        "--",
        "ls /etc/ssh/ | grep -c ssh_host_ || true",
    ]);
    assert_eq!(stdout(&out).trim(), "0", "host keys baked into the image");
    world.assert_clean();
}

#[test]
fn stdin_is_forwarded_and_failure_tears_down() {
    let world = World::new();
    bake(&world, "bookworm-amd64");
    let mut child = world
        .cmd()
        .args(["vm", "run", "bookworm-amd64", "--", "tr a-z A-Z; exit 1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello guest\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim(), "HELLO GUEST");
    world.assert_clean();
}

/// What a build machine needs of its kernel and init: the whole module tree for modprobe,
/// cgroup2, binfmt_misc, /dev/fuse and /dev/loop-control, and an identity of its own.
const WHOLE_MACHINE: &str = "uname -m; modprobe -a overlay loop fuse br_netfilter && echo modprobe-ok; \
    grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts && echo cgroup2-ok; \
    grep -q ' /proc/sys/fs/binfmt_misc binfmt_misc ' /proc/mounts && echo binfmt-ok; \
    [ -c /dev/fuse ] && [ -c /dev/loop-control ] && echo devices-ok; \
    echo 0 > /dev/null < /dev/fuse && echo fuse-opens; cat /etc/machine-id";

fn assert_whole_machine(out: &str, arch: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..lines.len() - 1],
        [
            arch,
            "modprobe-ok",
            "cgroup2-ok",
            "binfmt-ok",
            "devices-ok",
            "fuse-opens"
        ],
        "{out}"
    );
    let id = lines[lines.len() - 1].to_owned();
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{out}"
    );
    id
}

#[test]
fn amd64_guests_are_whole_machines_each_with_its_own_machine_id() {
    let world = World::new();
    bake(&world, "bookworm-amd64");
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let out = world.run(&["vm", "run", "bookworm-amd64", "--", WHOLE_MACHINE]);
            assert!(out.status.success());
            assert_whole_machine(&stdout(&out), "x86_64")
        })
        .collect();
    assert_ne!(ids[0], ids[1], "two machines share a machine-id");
    world.assert_clean();
}

#[test]
fn arm64_guest_reports_aarch64_and_is_a_whole_machine() {
    let world = World::new();
    bake(&world, "bookworm-arm64");
    let out = world.run(&["vm", "run", "bookworm-arm64", "--", WHOLE_MACHINE]);
    assert!(out.status.success());
    assert_whole_machine(&stdout(&out), "aarch64");
    world.assert_clean();
}

#[test]
fn boot_timeout_is_an_error_and_tears_down() {
    // Same recipe as bookworm-amd64 (shares its image) but no time to boot: cold, as a warm
    // start reaches SSH in about 1 s under TCG.
    let text = std::fs::read_to_string(repo().join("builders/bookworm-amd64.toml")).unwrap()
        + "boot_timeout = \"1s\"\n";
    let project = project_with(&[("impatient", &text)]);
    let world = World::with_project(project.path().to_owned());
    bake(&World::new(), "bookworm-amd64");
    let out = world.run(&["vm", "run", "--cold", "impatient", "--", "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("did not accept SSH within 1s"), "{err}");
    assert!(err.contains("console log"), "{err}");
    world.assert_clean();
}

/// Sends `sig` while the machine boots or while its command runs; runner must exit with
/// 128+sig having removed everything.
fn interrupt(sig: i32, mid_command: bool) {
    let world = World::new();
    let mut child = sleeper(&world);
    if mid_command {
        wait_for_line(&mut child, "started", BOOT);
    } else {
        world.wait_for_machine(BOOT);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !world.machine_dirs().is_empty(),
        "the machine should be live"
    );
    signal(&child, sig);
    let code = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(code, Some(128 + sig));
    world.assert_clean();
}

#[test]
fn sigint_mid_boot_tears_down() {
    interrupt(libc::SIGINT, false);
}

#[test]
fn sigterm_mid_boot_tears_down() {
    interrupt(libc::SIGTERM, false);
}

#[test]
fn sigint_mid_command_tears_down() {
    interrupt(libc::SIGINT, true);
}

#[test]
fn sigterm_mid_command_tears_down() {
    interrupt(libc::SIGTERM, true);
}

#[test]
fn second_signal_forces_and_still_cleans_up() {
    let world = World::new();
    let mut child = sleeper(&world);
    wait_for_line(&mut child, "started", BOOT);
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGINT);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(128 + libc::SIGINT));
    world.assert_clean();
}

#[test]
fn gc_removes_what_a_sigkilled_runner_left() {
    let world = World::new();
    let mut child = sleeper(&world);
    wait_for_line(&mut child, "started", BOOT);
    child.kill().unwrap(); // SIGKILL: no teardown runs
    child.wait().unwrap();

    // The orphan is really there: its directory and its QEMU.
    assert_eq!(world.machine_dirs().len(), 1);
    assert!(
        !processes_mentioning(world.state.path()).is_empty(),
        "QEMU should outlive runner"
    );

    // A dry run only reports.
    let dry = world.run(&["gc"]);
    assert!(stdout(&dry).contains("orphan"), "{}", stdout(&dry));
    assert_eq!(
        world.machine_dirs().len(),
        1,
        "gc without --force removed something"
    );

    let forced = world.run(&["gc", "--force"]);
    assert!(forced.status.success());
    assert!(
        stdout(&forced).contains("removed machine"),
        "{}",
        stdout(&forced)
    );
    world.assert_clean();
}

#[test]
fn gc_leaves_machines_of_a_live_runner_alone() {
    let world = World::new();
    let mut child = sleeper(&world);
    wait_for_line(&mut child, "started", BOOT);
    let out = world.run(&["gc", "--force"]);
    assert!(stdout(&out).contains("in use"), "{}", stdout(&out));
    assert_eq!(world.machine_dirs().len(), 1);
    signal(&child, libc::SIGTERM);
    wait_exit(&mut child, Duration::from_secs(60));
    world.assert_clean();
}

#[test]
fn vm_shell_pins_the_host_key_and_leaves_no_key_behind() {
    let world = World::new();
    bake(&world, "bookworm-amd64");
    let mut child = world
        .cmd()
        .args(["vm", "shell", "bookworm-amd64"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo shell-$((6*7))\nexit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("shell-42"), "{}", stdout(&out));
    assert_eq!(
        out.status.code(),
        Some(5),
        "the shell's exit status is runner's"
    );
    world.assert_clean();
}
