//! Build caches on real guests: what a build leaves in a cached directory is there for the
//! next build of its key, and nowhere else; failed, oversized and interrupted builds change
//! nothing; a reproduction runs without the cache.
//!
//! The image cache (and so the caches in it) is shared by every test and every CI run, so
//! each test names its caches with a tag of its own and removes them at the end.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A tag no other test (or earlier run) uses.
fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Counts its builds in the cached `/var/cache/demo`; fails (exit 7) after counting when the
/// context holds `fail`.
const COUNTER: &str = "#!/bin/sh\nset -e\nmkdir -p /var/cache/demo\n\
    n=$(cat /var/cache/demo/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /var/cache/demo/n\n\
    echo \"seen $n\" > \"$RUNNER_OUT/count.txt\"\n[ ! -e fail ] || exit 7\n";

/// Tries to write past the end of the cache's filesystem (32 MiB for a 16M limit) on the bare
/// disk, which a hostile guest could do to grow the host's file: QEMU must refuse it.
const RAW_WRITE: &str = "#!/bin/sh\nset -e\nfor d in /sys/block/vd*; do \
    [ \"$(cat $d/serial)\" = runner-cache ] && dev=/dev/${d##*/}; done\n\
    if yes x | head -c 1048576 | dd of=$dev bs=1M seek=40 oflag=direct 2>/dev/null; \
    then echo raw write accepted; else echo raw write refused; fi\n";

fn counted(project: &Path) -> String {
    std::fs::read_to_string(project.join("artifacts/t/count.txt"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The key directories of caches whose name starts with `name-`.
fn key_dir(name: &str) -> PathBuf {
    let root = image_cache().join("caches");
    let mut hits: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .strip_prefix(name)
                .is_some_and(|rest| rest.len() == 13 && rest.starts_with('-'))
        })
        .collect();
    assert_eq!(hits.len(), 1, "caches named {name}: {hits:?}");
    hits.pop().unwrap()
}

/// The generations in a key directory, and its unfinished parts.
fn contents(dir: &Path) -> (Vec<u64>, Vec<String>) {
    let mut gens = vec![];
    let mut parts = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("gen-")
            .and_then(|r| r.strip_suffix(".qcow2"))
        {
            gens.push(n.parse().unwrap());
        }
        if name.ends_with(".part") {
            parts.push(name);
        }
    }
    gens.sort_unstable();
    (gens, parts)
}

/// Whether a next generation of the cache named `name` is being saved.
fn saving_part(name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(image_cache().join("caches")) else {
        return false;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(name))
        .any(|e| {
            contents(&e.path())
                .1
                .iter()
                .any(|p| p.starts_with("gen-next"))
        })
}

/// The in-toto statement of `project`'s published `t`.
fn statement(project: &Path) -> Value {
    use base64::Engine;
    let line =
        std::fs::read_to_string(project.join("artifacts/t/provenance.intoto.jsonl")).unwrap();
    let env: Value = serde_json::from_str(line.trim()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

fn remove_cache(world: &World, name: &str) {
    let out = world.run(&["cache", "rm", name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("removed {name}-")));
}

#[test]
fn a_cache_carries_over_between_builds_of_its_key_and_a_failed_build_changes_nothing() {
    let key = tag();
    let p = one_target(
        COUNTER,
        &format!(
            "artifacts = [\"count.txt\"]\ncache = [\"/var/cache/demo\"]\ncache_key = \"{key}\"\n"
        ),
    );
    let world = World::with_project(p.path().to_owned());
    for want in ["seen 1", "seen 2"] {
        assert!(world.run(&["build", "--force"]).status.success());
        assert_eq!(counted(p.path()), want);
    }
    // Counted to 3 in its machine, then failed: the next build still sees 2.
    std::fs::write(p.path().join("src/fail"), "").unwrap();
    assert_eq!(world.run(&["build", "--force"]).status.code(), Some(1));
    assert_eq!(contents(&key_dir(&key)).0.last(), Some(&2));
    std::fs::remove_file(p.path().join("src/fail")).unwrap();
    assert!(world.run(&["build", "--force"]).status.success());
    assert_eq!(counted(p.path()), "seen 3");

    // The manifest names the generation read and the one saved; the provenance carries
    // both as byproducts, and the inputs digest does not depend on them.
    let m: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("artifacts/t/manifest.json")).unwrap())
            .unwrap();
    let (gens, parts) = contents(&key_dir(&key));
    assert_eq!((gens.last(), parts.len()), (Some(&3), 0));
    assert_eq!(m["cache"]["generation"], 2, "{m}");
    let dir = key_dir(&key);
    let sha = |n: u64| std::fs::read_to_string(dir.join(format!("gen-{n}.sha256"))).unwrap();
    assert_eq!(m["cache"]["read_sha256"], sha(2).trim());
    assert_eq!(m["cache"]["saved_sha256"], sha(3).trim());
    let by = &statement(p.path())["predicate"]["runDetails"]["byproducts"];
    assert_eq!(by[0]["digest"]["sha256"], sha(2).trim(), "{by}");
    assert_eq!(by[1]["digest"]["sha256"], sha(3).trim(), "{by}");

    // Without the cache: a fresh directory, and nothing saved.
    assert!(
        world
            .run(&["build", "--force", "--no-cache"])
            .status
            .success()
    );
    assert_eq!(counted(p.path()), "seen 1");
    assert_eq!(contents(&key_dir(&key)).0.last(), Some(&3));

    let ls = world.run(&["--message-format", "json", "cache", "ls"]);
    let listed: Value = serde_json::from_str(stdout(&ls).trim()).unwrap();
    let mine = listed["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["about"]["name"] == key.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(mine["about"]["paths"][0], "/var/cache/demo");
    assert_eq!(mine["in_use"], false);
    remove_cache(&world, &key);
    world.assert_clean();
}

#[test]
fn targets_with_different_keys_never_see_each_other_and_a_cache_key_shares_on_purpose() {
    let t = tag();
    let script = "#!/bin/sh\nset -e\nls -A /var/cache/demo > \"$RUNNER_OUT/seen.txt\"\n\
                  touch \"/var/cache/demo/$RUNNER_TARGET\"\n";
    let mut toml = String::new();
    for (name, key) in [("a", None), ("b", None), ("c", Some("s")), ("d", Some("s"))] {
        toml.push_str(&format!(
            "[target.{name}-{t}]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\n\
             context = \"src\"\nartifacts = [\"seen.txt\"]\ncache = [\"/var/cache/demo\"]\n{}\n",
            key.map_or(String::new(), |k| format!("cache_key = \"{k}-{t}\""))
        ));
    }
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", script)
        .file("src/.keep", "")
        .toml(&toml)
        .done();
    let world = World::with_project(p.path().to_owned());
    let (a, b, c, d) = (
        format!("a-{t}"),
        format!("b-{t}"),
        format!("c-{t}"),
        format!("d-{t}"),
    );
    assert!(world.run(&["build", &a, &c]).status.success());
    assert!(world.run(&["build", &b, &d]).status.success());
    let seen = |name: &str| {
        std::fs::read_to_string(p.path().join(format!("artifacts/{name}/seen.txt"))).unwrap()
    };
    assert_eq!(seen(&a), "", "a's cache starts empty");
    assert_eq!(seen(&b), "", "b must never see a's files");
    assert_eq!(seen(&c), "");
    assert_eq!(seen(&d), format!("{c}\n"), "d shares c's cache_key");
    for name in [a.as_str(), b.as_str(), &format!("s-{t}")] {
        remove_cache(&world, name);
    }
    world.assert_clean();
}

#[test]
fn an_oversized_cache_is_refused_by_name_before_anything_is_published() {
    let key = tag();
    let p = one_target(
        "#!/bin/sh\nset -e\nyes runner | head -c 24000000 > /var/cache/demo/big\n\
         echo ok > \"$RUNNER_OUT/ok.txt\"\n",
        &format!(
            "artifacts = [\"ok.txt\"]\ncache = [\"/var/cache/demo\"]\ncache_key = \"{key}\"\n\
             [limits]\nmax_cache_size = \"16M\"\n"
        ),
    );
    let world = World::with_project(p.path().to_owned());
    let out = world.run(&["build", "--message-format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let events = json_events(&out);
    let f = finished(&events, "t");
    assert_eq!(f["phase"], "cache", "{f}");
    let error = f["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cache `{key}-")) && error.contains("over max_cache_size 16M"),
        "{error}"
    );
    assert!(!p.path().join("artifacts/t/manifest.json").exists());
    assert_eq!(contents(&key_dir(&key)), (vec![0], vec![]));
    remove_cache(&world, &key);
    world.assert_clean();
}

/// The cache's disk is only as large as its filesystem: a guest writing past it on the bare
/// disk gets an I/O error instead of growing the host's file, and the build, which cannot
/// seal a cache with I/O errors, saves nothing.
#[test]
fn a_guest_writing_past_its_cache_filesystem_grows_nothing_on_the_host() {
    let key = tag();
    let p = one_target(
        RAW_WRITE,
        &format!(
            "cache = [\"/var/cache/demo\"]\ncache_key = \"{key}\"\n\
             [limits]\nmax_cache_size = \"16M\"\n"
        ),
    );
    let world = World::with_project(p.path().to_owned());
    let out = world.run(&["build", "--message-format", "json"]);
    let log = log_of(&world);
    assert!(log.contains("raw write refused"), "{log}");
    assert_eq!(finished(&json_events(&out), "t")["phase"], "cache");
    assert_eq!(contents(&key_dir(&key)), (vec![0], vec![]));
    remove_cache(&world, &key);
    world.assert_clean();
}

#[test]
fn ctrl_c_while_a_generation_is_saved_keeps_the_previous_one_and_gc_removes_a_killed_part() {
    let key = tag();
    let p = one_target(
        "#!/bin/sh\nset -e\nyes runner | head -c 400000000 > /var/cache/demo/big\n",
        &format!("cache = [\"/var/cache/demo\"]\ncache_key = \"{key}\"\n"),
    );
    let world = World::with_project(p.path().to_owned());
    let saving = |world: &World| {
        let mut child = world.spawn(&["build", "--force"]);
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if saving_part(&key) {
                return child;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("no generation was ever saved");
    };

    let mut child = saving(&world);
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), Some(130));
    world.assert_clean();
    assert_eq!(contents(&key_dir(&key)), (vec![0], vec![]));

    let mut child = saving(&world);
    child.kill().unwrap();
    child.wait().unwrap();
    let dry = world.run(&["gc"]);
    assert!(
        stdout(&dry).contains("unfinished cache generation"),
        "{}",
        stdout(&dry)
    );
    assert!(world.run(&["gc", "--force"]).status.success());
    world.assert_clean();
    assert_eq!(contents(&key_dir(&key)), (vec![0], vec![]));
    remove_cache(&world, &key);
}

#[test]
fn a_reproduction_of_a_cached_build_runs_without_the_cache_and_is_identical() {
    let key = tag();
    let p = one_target(
        COUNTER,
        &format!(
            "artifacts = [\"count.txt\"]\ncache = [\"/var/cache/demo\"]\ncache_key = \"{key}\"\n"
        ),
    );
    let world = World::with_project(p.path().to_owned());
    // The published build saw an empty cache; a reproduction that read it would count 2.
    assert!(world.run(&["build"]).status.success());
    assert_eq!(counted(p.path()), "seen 1");
    let saved = p.path().join("first-manifest.json");
    std::fs::copy(p.path().join("artifacts/t/manifest.json"), &saved).unwrap();
    let out = world.run(&[
        "reproduce",
        saved.to_str().unwrap(),
        "--context",
        p.path().join("src").to_str().unwrap(),
        "--message-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["reproduced"], true, "{doc}");
    assert_eq!(
        contents(&key_dir(&key)).0,
        vec![0, 1],
        "the reproduction saved no generation"
    );
    remove_cache(&world, &key);
    world.assert_clean();
}
