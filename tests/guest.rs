//! The guest as a complete build machine, on real QEMU guests: Docker builds, saves, loads
//! and runs an image; a systemd guest runs services; a script's leftover daemons, a flood
//! of output and a machine that powers itself off all end the way a user expects.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::*;
use runner::digest::sha256_hex;
use serde_json::Value;

/// Every member of a tar, by name.
fn members(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = vec![];
        e.read_to_end(&mut bytes).unwrap();
        out.insert(name, bytes);
    }
    out
}

/// A `docker save` archive checked on the host: its manifest names a config and layers that
/// are all there, and each layer's sha256 is the config's diff id in order.
fn assert_docker_archive(path: &Path) {
    let m = members(path);
    let manifest: Value = serde_json::from_slice(&m["manifest.json"]).unwrap();
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"][0], "hello:1", "{manifest}");
    let config: Value = serde_json::from_slice(&m[entry["Config"].as_str().unwrap()]).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = entry["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    assert!(!layers.is_empty());
    for (layer, id) in layers.iter().zip(diff_ids) {
        let bytes = &m[layer.as_str().unwrap()];
        assert_eq!(
            format!("sha256:{}", sha256_hex(bytes)),
            id.as_str().unwrap()
        );
        // The layer holds the one file the Dockerfile copied.
        let mut inner = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = inner
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    }
}

#[test]
fn the_docker_example_builds_an_image_that_a_second_machine_loads_and_runs() {
    let (_tmp, root) = example("docker-image");
    let world = World::with_project(root.clone());
    let out = world.run(&["build", "hello-image"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = root.join("artifacts/hello-image/hello-image.tar");
    assert_docker_archive(&tar);

    // A second, fresh machine of the same builder loads the saved image and runs it.
    let load = Project::new()
        .file(
            "builders/bookworm-docker.toml",
            &std::fs::read_to_string(root.join("builders/bookworm-docker.toml")).unwrap(),
        )
        .file(
            "run.sh",
            "#!/bin/sh\nset -eu\n(dockerd >/var/log/dockerd.log 2>&1 &)\n\
             until docker info >/dev/null 2>&1; do sleep 1; done\n\
             docker load -i hello-image.tar\ndocker run --rm hello:1 | tee \"$RUNNER_OUT/said.txt\"\n",
        )
        .toml(
            "[target.run]\nbuilder = \"bookworm-docker\"\nscript = \"run.sh\"\ncontext = \"ctx\"\n",
        )
        .done();
    std::fs::create_dir_all(load.path().join("ctx")).unwrap();
    std::fs::copy(&tar, load.path().join("ctx/hello-image.tar")).unwrap();
    let world2 = World::with_project(load.path().to_owned());
    let out = world2.run(&["build", "run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = std::fs::read_to_string(load.path().join("artifacts/run/said.txt")).unwrap();
    assert_eq!(said, "hello from a runner-built image\n");
    world.assert_clean();
    world2.assert_clean();
}

const SYSTEMD: &str = "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
                       arch = \"amd64\"\ninit = \"systemd\"\n";

/// Waits for boot to finish, prints the state (listing failed units), starts a service and
/// shows it ran.
const SERVICES: &str = "state=$(systemctl is-system-running --wait); echo \"state: $state\"; \
    systemctl --failed --no-legend --plain; \
    printf '[Service]\\nType=oneshot\\nExecStart=/bin/sh -c \"echo served > /run/hello\"\\n' \
      > /etc/systemd/system/hello.service; \
    systemctl daemon-reload && systemctl start hello && cat /run/hello; \
    cat /proc/1/comm; cat /etc/machine-id";

#[test]
fn a_systemd_builder_boots_its_init_and_runs_services_with_runners_keys() {
    let project = Project::new().builder("sd", SYSTEMD).done();
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["vm", "run", "sd", "--", SERVICES]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let state = text.lines().next().unwrap();
    assert!(
        state == "state: running" || state == "state: degraded",
        "{text}"
    );
    assert!(text.contains("served\nsystemd\n"), "{text}");
    eprintln!("systemd guest: {state}; failed units: {text}");
    world.assert_clean();

    // A runner SIGKILLed while its systemd machine runs: gc finds and removes it.
    let mut child = world.spawn(&["vm", "run", "sd", "--", "echo started; sleep 600"]);
    wait_for_line(&mut child, "started", Duration::from_secs(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(world.machine_dirs().len(), 1);
    let forced = world.run(&["gc", "--force"]);
    assert!(
        stdout(&forced).contains("removed machine"),
        "{}",
        stdout(&forced)
    );
    world.assert_clean();
}

#[test]
fn a_daemon_left_holding_the_output_does_not_hang_the_build() {
    // With a 60 s deadline: waiting for the leftover would fail the target.
    let script = "#!/bin/sh\necho building\nsleep 3600 &\necho done > \"$RUNNER_OUT/r.txt\"\n";
    let project = one_target(script, "timeout = \"60s\"\n");
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["build", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = log_of(&world);
    assert!(
        log.contains("left 1 process(es) holding its output"),
        "{log}"
    );
    assert!(
        log.contains("left running:") && log.contains("sleep 3600"),
        "{log}"
    );
    world.assert_clean();
}

#[test]
fn a_flood_of_output_keeps_the_log_within_its_limit() {
    // 500 MB of output against the default 64 MiB limit.
    let script = "#!/bin/sh\nhead -c 500000000 /dev/zero | tr '\\0' 'x' | fold -w 100\n\
                  echo ok > \"$RUNNER_OUT/r.txt\"\n";
    let project = one_target(script, "");
    let world = World::with_project(project.path().to_owned());
    let mut child = world.spawn(&["build", "t"]);
    let peak = watch_peak_rss(child.id());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(900)), Some(0));
    let peak_mib = peak.load(std::sync::atomic::Ordering::SeqCst) >> 10;
    eprintln!("peak runner RSS while 500 MB of output went by: {peak_mib} MiB");
    let path = world.state.path().join("logs/builds/t.log");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= (64 << 20) + 4096, "log is {size} bytes");
    let log = log_of(&world);
    assert!(
        log.contains("[runner] log truncated:"),
        "no truncation note"
    );
    let (head, tail) = log.split_once("[runner] log truncated:").unwrap();
    assert!(
        head.contains("xxxxxxxxxx\n") && tail.contains("xxxxxxxxxx\n"),
        "head and tail kept"
    );
    world.assert_clean();
}

#[test]
fn a_machine_that_powers_off_mid_script_fails_as_a_machine_that_died() {
    let script = "#!/bin/sh\necho about to power off\nsleep 1\npoweroff\nsleep 600\n";
    let project = one_target(script, "timeout = \"90s\"\n");
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["build", "t", "--message-format", "json"]);
    assert!(!out.status.success());
    let events = json_events(&out);
    let finished = finished(&events, "t");
    assert_eq!(finished["failure"], "machine_died", "{finished}");
    assert_eq!(finished["phase"], "provision");
    let err = finished["error"].as_str().unwrap();
    assert!(err.contains("died during provision"), "{err}");
    assert!(err.contains("-console.log"), "{err}");
    world.assert_clean();
}
