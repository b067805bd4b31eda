//! A guest that sends without end, on real QEMU guests: what runner keeps of it stays within
//! its caps (command output, the console log), and a script that leaves thousands of
//! processes behind does not hold the build up.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The `finished` event of a JSON-lines run.
fn finished(events: &str) -> Value {
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "finished")
        .unwrap_or_else(|| panic!("no finished event in:\n{events}"))
}

#[test]
fn a_listing_that_never_ends_fails_the_collect_at_its_cap_with_runners_memory_bounded() {
    // Every later `find` in the guest (runner's artifact listing) is an endless zero stream.
    let script = "#!/bin/sh\necho ok > \"$RUNNER_OUT/r.txt\"\n\
                  printf '#!/bin/sh\\nexec cat /dev/zero\\n' > /usr/bin/find\n";
    let project = one_target(script, "timeout = \"240s\"\n");
    let world = World::with_project(project.path().to_owned());
    let events = world.state.path().join("events.jsonl");
    let mut child = world
        .cmd()
        .args(["build", "t", "--message-format", "json"])
        .stdout(std::fs::File::create(&events).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peak = watch_peak_rss(child.id());
    let code = wait_exit(&mut child, Duration::from_secs(300));
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    let peak_mib = peak.load(Ordering::SeqCst) >> 20;
    eprintln!("peak runner RSS against an endless listing: {peak_mib} MiB");
    assert!(peak_mib < 200, "runner's peak RSS was {peak_mib} MiB");
    let done = finished(&std::fs::read_to_string(&events).unwrap());
    assert_eq!(done["phase"], "collect", "{done}");
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("find . -type f -print0"), "{err}");
    assert!(err.contains("runner's cap"), "{err}");
    assert!(
        !err.contains("timed out") && !err.contains("timeout"),
        "{err}"
    );
    world.assert_clean();
}

#[test]
fn a_serial_port_flood_keeps_the_console_log_within_its_cap() {
    let script = "#!/bin/sh\ntimeout 60 sh -c 'yes runner-flood > /dev/ttyS0' || true\n\
                  echo ok > \"$RUNNER_OUT/r.txt\"\n";
    let project = one_target(
        script,
        "timeout = \"240s\"\n[limits]\nmax_console_size = \"1M\"\n",
    );
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["build", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The build machine's console (a snapshot may have been made first, by a machine of its
    // own): the target log names the machine.
    let log = log_of(&world);
    let id = log
        .split_once("(machine ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no machine in the log: {log}"));
    let consoles = [world.state.path().join(format!("logs/{id}-console.log"))];
    let size = std::fs::metadata(&consoles[0]).unwrap().len();
    assert!(size <= (1 << 20) + 4096, "the console log is {size} bytes");
    let text = String::from_utf8_lossy(&std::fs::read(&consoles[0]).unwrap()).into_owned();
    let (head, tail) = text
        .split_once("[runner] log truncated:")
        .expect("the flood passed the cap, so the log says what it left out");
    // The boot's markers stay in the head; the flood's end in the tail.
    // (`switch_root` is on every console: a warm machine never prints the boot before it.)
    assert!(
        head.contains("runner-initrd: switch_root"),
        "head lost the boot"
    );
    // (The tty turns each `\n` into `\r\n`.)
    assert!(tail.contains("runner-flood\r\n"), "tail lost the flood");
    world.assert_clean();
}

#[test]
fn thousands_of_leftover_processes_do_not_hold_the_build_up() {
    let script = "#!/bin/sh\nfor i in $(seq 2000); do sleep 3600 & done\n\
                  echo ok > \"$RUNNER_OUT/r.txt\"\necho spawned-all\n";
    let project = one_target(script, "timeout = \"240s\"\n");
    let world = World::with_project(project.path().to_owned());
    let mut child = world.spawn(&["build", "t", "--message-format", "json"]);
    wait_for_line(&mut child, "spawned-all", Duration::from_secs(240));
    let exited = Instant::now();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(120)), Some(0));
    let after = exited.elapsed();
    eprintln!("the build ended {after:?} after the script's last line");
    // The bug was a build held until its 240 s timeout. What remains after the script is
    // leak_timeout (2 s), listing 2000 processes, collect and teardown: about 10 s under TCG
    // on an idle host, 12 s under a loaded CI one. A quarter of the timeout tells the two
    // apart without timing the machine (the figure is printed above).
    assert!(after < Duration::from_secs(60), "{after:?}");
    let log = log_of(&world);
    assert!(log.contains("left 2000 process(es)"), "{log}");
    assert!(log.contains("… and 1980 more"), "{log}");
    world.assert_clean();
}
