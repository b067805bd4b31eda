//! `runner build` end to end on real QEMU guests: the example project, failures, timeouts,
//! Ctrl-C, hostile artifacts and ignore rules.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A project using the repository's bookworm-amd64 builder, with `runner.toml` and scripts.
fn project(toml: &str, scripts: &[(&str, &str)]) -> tempfile::TempDir {
    scripts
        .iter()
        .fold(
            Project::new().repo_builder("bookworm-amd64").toml(toml),
            |p, (n, t)| p.file(n, t),
        )
        .done()
}

#[test]
fn example_builds_three_targets_in_parallel() {
    let (_tmp, root) = example("hello-c");
    let world = World::with_project(root.clone());
    let targets = ["hello-bookworm", "hello-bookworm-debug", "hello-trixie"];
    // Bake first, so that timing below is about machines, not about one image baking longer.
    assert!(
        world
            .run(&["image", "build", "bookworm-gcc", "trixie-gcc"])
            .status
            .success()
    );
    let out = world.run(&[
        "build",
        "hello-bookworm*",
        "hello-trixie",
        "-j",
        "3",
        "--message-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let events = json_events(&out);

    // Parallel: every target's machine was launched before any target finished.
    let first_finish = events
        .iter()
        .position(|e| e["event"] == "finished")
        .unwrap();
    for t in targets {
        assert!(
            events[..first_finish]
                .iter()
                .any(|e| e["event"] == "phase" && e["target"] == t && e["phase"] == "boot"),
            "{t} had not started booting when the first target finished"
        );
    }

    // Every machine was restored from its builder's warm-start snapshot.
    for t in targets {
        let start = events
            .iter()
            .find(|e| e["event"] == "machine" && e["target"] == t)
            .unwrap_or_else(|| panic!("no machine event for {t}"));
        assert!(
            start["start"].as_str().unwrap().starts_with("warm"),
            "{t}: {start}"
        );
    }

    for t in targets {
        let dir = root.join("artifacts").join(t);
        let info = std::fs::read_to_string(dir.join("build-info.txt")).unwrap();
        assert!(info.contains(&format!("target: {t}")), "{info}");
        let debian = if t.contains("trixie") {
            "os: Debian GNU/Linux 13"
        } else {
            "os: Debian GNU/Linux 12"
        };
        assert!(info.contains(debian), "{t}: {info}");
        // The program really is the guest's build, and runs.
        let run = std::process::Command::new(dir.join("hello"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from runner\n");
        // SHA256SUMS lists exactly the artifacts, with correct digests.
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        let mut listed: Vec<&str> = sums
            .lines()
            .map(|l| l.split_once("  ").unwrap().1)
            .collect();
        listed.sort();
        assert_eq!(listed, ["build-info.txt", "hello"]);
        for l in sums.lines() {
            let (digest, name) = l.split_once("  ").unwrap();
            assert_eq!(
                digest,
                runner::digest::sha256_file(&dir.join(name)).unwrap(),
                "{t}/{name}"
            );
        }
        // The JSON stream agrees with the store and the summary.
        let f = finished(&events, t);
        assert_eq!(f["outcome"], "succeeded");
        let paths: Vec<&str> = f["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            paths.iter().any(|p| p.ends_with(&format!("{t}/hello"))),
            "{paths:?}"
        );
        assert!(
            stderr(&out)
                .lines()
                .any(|l| l.starts_with(t) && l.contains("succeeded")),
            "summary lacks {t}"
        );
    }
    // The three share one context directory, so one context digest, recorded for each.
    let digests: Vec<&Value> = targets
        .iter()
        .map(|t| &finished(&events, t)["context_digest"])
        .collect();
    assert!(
        digests[0].as_str().is_some_and(|d| d.len() == 64),
        "{digests:?}"
    );
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let end = events.last().unwrap();
    assert_eq!(end["event"], "run_finished");
    assert_eq!(end["succeeded"], 3);
    assert_eq!(end["failed"], 0);
    world.assert_clean();
}

const FAIL_TOML: &str = r#"
[target.bad]
builder = "bookworm-amd64"
script = "fail.sh"
artifacts = ["*"]

[target.good]
builder = "bookworm-amd64"
script = "ok.sh"
artifacts = ["ok.txt"]
"#;

#[test]
fn a_failing_script_names_target_phase_code_and_log_and_spares_the_others() {
    let proj = project(
        FAIL_TOML,
        &[
            (
                "fail.sh",
                "#!/bin/sh\necho partial > \"$RUNNER_OUT/partial.txt\"\necho 'compiling... broken' >&2\nexit 3\n",
            ),
            ("ok.sh", "#!/bin/sh\necho fine > \"$RUNNER_OUT/ok.txt\"\n"),
        ],
    );
    let world = World::with_project(proj.path().to_owned());
    let out = world.run(&["build", "--all", "--keep-going", "-j", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad failed in provision"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    let log = world.state.path().join("logs/builds/bad.log");
    assert!(
        err.contains(&log.display().to_string()),
        "log path not named: {err}"
    );
    assert!(
        err.contains("compiling... broken"),
        "log tail not shown: {err}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("compiling... broken")
    );
    assert!(
        !proj.path().join("artifacts/bad").exists(),
        "a failed target published artifacts"
    );
    assert_eq!(
        std::fs::read_to_string(proj.path().join("artifacts/good/ok.txt")).unwrap(),
        "fine\n"
    );
    world.assert_clean();
}

#[test]
fn without_keep_going_later_targets_are_skipped() {
    let proj = project(
        FAIL_TOML,
        &[
            ("fail.sh", "#!/bin/sh\nexit 3\n"),
            ("ok.sh", "#!/bin/sh\necho fine > \"$RUNNER_OUT/ok.txt\"\n"),
        ],
    );
    let world = World::with_project(proj.path().to_owned());
    let out = world.run(&["build", "--all", "-j", "1", "--message-format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let events = json_events(&out);
    assert_eq!(finished(&events, "bad")["outcome"], "failed");
    assert_eq!(finished(&events, "bad")["exit_code"], 3);
    assert_eq!(finished(&events, "good")["outcome"], "skipped");
    world.assert_clean();
}

#[test]
fn a_timeout_mid_provision_fails_and_tears_down() {
    let proj = project(
        "[target.slow]\nbuilder = \"bookworm-amd64\"\nscript = \"slow.sh\"\ntimeout = \"60s\"\n",
        &[("slow.sh", "#!/bin/sh\necho started\nsleep 600\n")],
    );
    let world = World::with_project(proj.path().to_owned());
    let out = world.run(&["build", "slow"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("slow failed in provision: timed out after 1m"),
        "{err}"
    );
    world.assert_clean();
}

#[test]
fn ctrl_c_mid_provision_tears_down() {
    let proj = project(
        "[target.long]\nbuilder = \"bookworm-amd64\"\nscript = \"long.sh\"\n",
        &[("long.sh", "#!/bin/sh\necho started-long\nsleep 600\n")],
    );
    let world = World::with_project(proj.path().to_owned());
    let mut child = world.spawn(&["build", "long", "--message-format", "json"]);
    wait_for_line(&mut child, "started-long", Duration::from_secs(300));
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), Some(130));
    assert!(!proj.path().join("artifacts/long").exists());
    world.assert_clean();
}

/// Each target makes the guest's `tar` emit one kind of hostile entry.
const HOSTILE_SCRIPT: &str = r#"#!/bin/sh
set -e
cd "$RUNNER_OUT"
echo ok > ok.txt
mkdir -p /hostile && cd /hostile
case "$RUNNER_TARGET" in
  dotdot)   mkdir -p a && echo evil > evil && FAKE='cd /hostile/a && exec /usr/bin/tar -P -c -f - ../evil' ;;
  absolute) echo evil > /evil && FAKE='exec /usr/bin/tar -P -c -f - /evil' ;;
  symlink)  ln -s /etc evil && FAKE='cd /hostile && exec /usr/bin/tar -c -f - evil' ;;
  hardlink) echo x > a && ln a evil && FAKE='cd /hostile && exec /usr/bin/tar -c -f - a evil' ;;
  device)   mknod evil c 1 3 && FAKE='cd /hostile && exec /usr/bin/tar -c -f - evil' ;;
  fifo)     mkfifo evil && FAKE='cd /hostile && exec /usr/bin/tar -c -f - evil' ;;
  huge)     head -c 3145728 /dev/zero > "$RUNNER_OUT/big.bin"; exit 0 ;;
esac
printf '#!/bin/sh\n%s\n' "$FAKE" > /usr/local/bin/tar
chmod 755 /usr/local/bin/tar
"#;

#[test]
fn hostile_artifacts_never_land_outside_the_target_directory() {
    let kinds = [
        "dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "huge",
    ];
    let mut toml = String::from("[limits]\nmax_file_size = \"1M\"\n");
    for k in kinds {
        toml += &format!("\n[target.{k}]\nbuilder = \"bookworm-amd64\"\nscript = \"hostile.sh\"\n");
    }
    let proj = project(&toml, &[("hostile.sh", HOSTILE_SCRIPT)]);
    let sentinel = proj.path().join("sentinel");
    std::fs::write(&sentinel, "untouched").unwrap();
    let world = World::with_project(proj.path().to_owned());
    let out = world.run(&[
        "build",
        "--all",
        "--keep-going",
        "-j",
        "2",
        "--message-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let events = json_events(&out);
    for k in kinds {
        let f = finished(&events, k);
        assert_eq!(f["outcome"], "failed", "{k} should fail: {f}");
        assert_eq!(f["phase"], "collect", "{k}: {f}");
        let err = f["error"].as_str().unwrap();
        assert!(
            err.contains(k) && err.contains("failed in collect"),
            "{k}: {err}"
        );
        assert!(
            !proj.path().join("artifacts").join(k).exists(),
            "{k} published something"
        );
    }
    // Nothing named `evil` anywhere near the project, and the sentinel is intact.
    let found = std::process::Command::new("find")
        .arg(proj.path().parent().unwrap())
        .args(["-maxdepth", "4", "-name", "evil"])
        .output()
        .unwrap();
    assert_eq!(stdout(&found), "", "a hostile entry escaped");
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "untouched");
    assert!(!Path::new("/evil").exists());
    world.assert_clean();
}

#[test]
fn ignored_files_stay_home_and_hidden_files_travel() {
    let proj = project(
        "[target.ls]\nbuilder = \"bookworm-amd64\"\nscript = \"ls.sh\"\nartifacts = [\"listing.txt\"]\n",
        &[
            (
                "ls.sh",
                "#!/bin/sh\ncd /build/src && find . | sort > \"$RUNNER_OUT/listing.txt\"\n",
            ),
            (".gitignore", "*.tmp\nbuild/\n"),
            (".runnerignore", "secret.txt\n"),
            (".hidden-config", "kept\n"),
            ("junk.tmp", "ignored\n"),
            ("secret.txt", "never in a guest\n"),
        ],
    );
    std::fs::create_dir_all(proj.path().join("build")).unwrap();
    std::fs::write(proj.path().join("build/out.o"), "ignored").unwrap();
    let world = World::with_project(proj.path().to_owned());
    // A first build publishes artifacts/; the second must not send them back.
    assert_eq!(world.run(&["build", "ls"]).status.code(), Some(0));
    assert_eq!(world.run(&["build", "ls"]).status.code(), Some(0));
    let listing = std::fs::read_to_string(proj.path().join("artifacts/ls/listing.txt")).unwrap();
    // The local store answers `artifacts get` too, verified against the manifest.
    let out = proj.path().join("fetched");
    let got = world.run(&["artifacts", "get", "ls", "--out", out.to_str().unwrap()]);
    assert_eq!(got.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(out.join("listing.txt")).unwrap(),
        listing
    );
    for present in [
        "./.hidden-config",
        "./.gitignore",
        "./ls.sh",
        "./builders/bookworm-amd64.toml",
    ] {
        assert!(
            listing.lines().any(|l| l == present),
            "{present} missing:\n{listing}"
        );
    }
    for absent in ["./junk.tmp", "./secret.txt", "./build", "./artifacts"] {
        assert!(
            !listing
                .lines()
                .any(|l| l == absent || l.starts_with(&format!("{absent}/"))),
            "{absent} reached the guest:\n{listing}"
        );
    }
    world.assert_clean();
}

#[test]
fn apt_example_installs_build_dependencies_inside_the_guest() {
    let (_tmp, root) = example("apt-deps");
    let world = World::with_project(root.clone());
    let out = world.run(&["build", "inventory"]);
    assert_eq!(out.status.code(), Some(0));
    let tsv = std::fs::read_to_string(root.join("artifacts/inventory/versions.tsv")).unwrap();
    assert_eq!(tsv, "jq\t1.6\nlibc6\t2.36\nopenssh-server\t1:9.2p1\n");
    let json = std::fs::read_to_string(root.join("artifacts/inventory/inventory.json")).unwrap();
    assert!(
        json.starts_with("{\n  \"packages\""),
        "jq -S did not run: {json}"
    );
    world.assert_clean();
}

#[test]
fn keep_failed_leaves_a_reachable_machine_that_gc_removes() {
    let proj = project(
        "[target.broken]\nbuilder = \"bookworm-amd64\"\nscript = \"broken.sh\"\n",
        &[(
            "broken.sh",
            "#!/bin/sh\necho clue > /root/clue.txt\nexit 2\n",
        )],
    );
    let world = World::with_project(proj.path().to_owned());
    let out = world.run(&["build", "broken", "--keep-failed"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let ssh_line = err
        .lines()
        .find_map(|l| l.split("machine kept: ").nth(1))
        .unwrap_or_else(|| panic!("no ssh instructions in: {err}"));
    let ssh_cmd = ssh_line.split("  (").next().unwrap();

    // The machine outlived runner, and the printed command gets in, with the host key pinned.
    assert_eq!(world.machine_dirs().len(), 1);
    let probe = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{ssh_cmd} -o StrictHostKeyChecking=yes -o BatchMode=yes cat /root/clue.txt"
        ))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&probe),
        "clue\n",
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let gc = world.run(&["gc", "--force"]);
    assert!(stdout(&gc).contains("kept"), "{}", stdout(&gc));
    world.assert_clean();
}
