//! The first SIGTERM ends runner promptly even while it is deep in host-side work that no
//! async cancellation reaches: hashing a context of many gigabytes on blocking threads.
//! Host-side only: the signal arrives before any machine is needed.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Bytes the process has read so far (`rchar` in /proc/<pid>/io: every thread's reads).
fn read_so_far(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn sigterm_while_hashing_a_huge_context_ends_runner_within_seconds() {
    let project = Project::new()
        .repo_builder("bookworm-amd64")
        .toml(
            "[target.big]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n\
             context = \"src\"\nartifacts = [\"out\"]\n",
        )
        .file("build.sh", "#!/bin/sh\ntrue\n")
        .file("src/small.txt", "x\n")
        .done();
    // 256 GiB of holes: many minutes of hashing, no disk.
    let big = std::fs::File::create(project.path().join("src/big.img")).unwrap();
    big.set_len(256 << 30).unwrap();
    let world = World::with_project(project.path().to_owned());
    let mut child = world.spawn(&["build", "big"]);
    let pid = child.id();
    // Until the hashing is well under way (a GiB read).
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_so_far(pid) < 1 << 30 {
        assert!(Instant::now() < deadline, "runner never started hashing");
        assert!(child.try_wait().unwrap().is_none(), "runner ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    // Hashing the rest would take minutes; a chunk takes milliseconds.
    let code = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(code, Some(128 + libc::SIGTERM), "not ended by the signal");
    world.assert_clean();
}
