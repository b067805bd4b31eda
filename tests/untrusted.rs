//! Untrusted input from outside the host: crafted manifests handed to `reproduce` and
//! `verify` are refused by field before anything is written, and a host secret (the signing
//! key) never enters a guest — refused in a context, and absent from the guest and the pack
//! when left out, proven from inside a real QEMU guest.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A manifest as runner writes one (schema 2), for target `t` built on `bookworm-amd64`.
fn manifest(script: &str) -> Value {
    let sha = |b: &[u8]| {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    json!({
        "schema": 2, "runner_version": "0.1.0", "target": "t",
        "builder": {"name": "bookworm-amd64", "recipe": {"distro": "debian", "suite": "bookworm",
            "arch": "amd64", "packages": [], "disk": "4G"}, "recipe_digest": HEX},
        "base_image_sha256": HEX, "context_digest": HEX, "context_excludes": [],
        "script": {"name": "build.sh", "sha256": sha(script.as_bytes()), "content": script},
        "artifact_globs": ["out.txt"], "env": {}, "source_date_epoch": 1700000000,
        "inputs_digest": HEX, "started_unix": 1700000001, "finished_unix": 1700000002,
        "artifacts": [{"path": "out.txt", "size": 3, "sha256": HEX,
            "uri": "file:///p/artifacts/t/out.txt"}],
        "machine": {"vcpus": 2, "memory_mib": 1024},
    })
}

/// `pointer` set to `value`, and the field the refusal must name.
fn hostile(pwned: &str) -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("/script/name", json!(pwned), "script.name"),
        (
            "/script/name",
            json!(format!("../../..{pwned}")),
            "script.name",
        ),
        ("/target", json!(format!("../../..{pwned}")), "target"),
        ("/builder/name", json!("../../etc/evil"), "builder.name"),
        (
            "/builder/recipe/suite",
            json!("--customize-hook=touch /tmp/x"),
            "builder.recipe.suite",
        ),
        (
            "/builder/recipe/packages",
            json!(["--hook-dir=/"]),
            "builder.recipe.packages[0]",
        ),
        (
            "/builder/recipe_digest",
            json!("0123"),
            "builder.recipe_digest",
        ),
        ("/base_image_sha256", json!("ami-1234"), "base_image_sha256"),
        ("/inputs_digest", json!("not hex at all"), "inputs_digest"),
        (
            "/artifacts/0/uri",
            json!("file:///etc/shadow"),
            "artifacts[0].uri",
        ),
        (
            "/artifacts/0/path",
            json!("/etc/shadow"),
            "artifacts[0].path",
        ),
        ("/machine/vcpus", json!(4096), "machine.vcpus"),
        (
            "/machine/memory_mib",
            json!(1u64 << 40),
            "machine.memory_mib",
        ),
        ("/started_unix", json!(u64::MAX), "started_unix"),
    ]
}

fn assert_refused(out: &std::process::Output, field: &str, what: &str) {
    let err = stderr(out);
    // 4: runner stopped on bad input (not a usage error, not a failed build).
    assert_eq!(out.status.code(), Some(4), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(
        err.contains(field),
        "{what}: the error names no `{field}`: {err}"
    );
}

#[test]
fn crafted_manifests_are_refused_by_field_and_write_nothing() {
    let p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("src/a.txt", "a\n")
        .toml(
            "[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n",
        )
        .file("build.sh", "#!/bin/sh\n")
        .done();
    let world = World::with_project(p.path().to_owned());
    let scratch = tempfile::tempdir().unwrap();
    let pwned = scratch.path().join("pwned");
    let pwned = pwned.to_str().unwrap();
    let out_dir = scratch.path().join("out");
    let key = scratch.path().join("k.pem");
    assert!(
        world
            .run(&["key", "generate", key.to_str().unwrap()])
            .status
            .success()
    );
    let public = scratch.path().join("k.pub");
    let script = "#!/bin/sh\necho hi > \"$RUNNER_OUT/out.txt\"\n";
    for (pointer, value, field) in hostile(pwned) {
        let mut m = manifest(script);
        *m.pointer_mut(pointer).unwrap() = value.clone();
        let dir = scratch.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("manifest.json");
        std::fs::write(&file, serde_json::to_vec(&m).unwrap()).unwrap();
        let what = format!("{pointer} = {value}");
        let out = world.run(&[
            "reproduce",
            file.to_str().unwrap(),
            "--context",
            p.path().join("src").to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert_refused(&out, field, &format!("reproduce {what}"));
        let out = world.run(&[
            "verify",
            dir.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ]);
        assert_refused(&out, field, &format!("verify {what}"));
        assert!(!Path::new(pwned).exists(), "{what} wrote {pwned}");
        assert!(
            !out_dir.exists(),
            "{what}: reproduce wrote its output before refusing"
        );
    }
    // Random bytes and a symlink to /dev/zero in the manifest's place.
    let dir = scratch.path().join("noise");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("manifest.json"), bytes).unwrap();
    let out = world.run(&[
        "reproduce",
        dir.join("manifest.json").to_str().unwrap(),
        "--context",
        ".",
    ]);
    assert_refused(&out, "not a JSON manifest", "random bytes");
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("manifest.json")).unwrap();
    let out = world.run(&[
        "reproduce",
        dir.join("manifest.json").to_str().unwrap(),
        "--context",
        ".",
    ]);
    assert_refused(&out, "symbolic link", "a symlink to /dev/zero");
    world.assert_clean();
}

/// A project whose context is its whole root, signing with a key at `key` (relative).
fn signing_project(key: &str, ignore: bool) -> tempfile::TempDir {
    let script = "#!/bin/sh\nset -e\n\
        find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -name 'runner-signing*' -print \
          2>/dev/null > \"$RUNNER_OUT/found.txt\" || true\n\
        grep -rl 'PRIVATE'' KEY' /build 2>/dev/null >> \"$RUNNER_OUT/found.txt\" || true\n\
        ls /build/src > \"$RUNNER_OUT/ls.txt\"\n";
    let mut p = Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", script)
        .file("main.c", "int main(void) { return 0; }\n")
        .toml(&format!(
            "[signing]\nkey = \"{key}\"\n\n[target.t]\nbuilder = \"bookworm-amd64\"\n\
             script = \"build.sh\"\nartifacts = [\"found.txt\", \"ls.txt\"]\n"
        ));
    if ignore {
        p = p.file(".runnerignore", &format!("{key}\n"));
    }
    p.done()
}

#[test]
fn the_signing_key_never_enters_a_guest() {
    let key = "runner-signing.pem";
    let p = signing_project(key, false);
    let world = World::with_project(p.path().to_owned());
    // `key generate` refuses to write into a build context.
    let inside = p.path().join(key);
    let out = world.run(&["key", "generate", inside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inside the build context"),
        "{}",
        stderr(&out)
    );
    assert!(!inside.exists());
    // A key put there by hand: the build refuses before anything is packed or booted,
    // naming both paths.
    let elsewhere = tempfile::tempdir().unwrap();
    let made = elsewhere.path().join("signing.pem");
    assert!(
        world
            .run(&["key", "generate", made.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::copy(&made, &inside).unwrap();
    let out = world.run(&["build", "t"]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the signing key") && err.contains(inside.to_str().unwrap()),
        "{err}"
    );
    assert!(world.machine_dirs().is_empty());
    world.assert_clean();

    // Left out by .runnerignore: the build runs, and from inside the guest the key is nowhere.
    let p = signing_project(key, true);
    std::fs::copy(&made, p.path().join(key)).unwrap();
    let world = World::with_project(p.path().to_owned());
    let out = world.run(&["build", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let arts = p.path().join("artifacts/t");
    let found = std::fs::read_to_string(arts.join("found.txt")).unwrap();
    assert_eq!(found.trim(), "", "the guest found the key: {found}");
    let ls = std::fs::read_to_string(arts.join("ls.txt")).unwrap();
    assert!(
        ls.contains("main.c") && !ls.contains("runner-signing"),
        "{ls}"
    );
    // Nor is it in the build's context pack (its tar and its ext4 image), which holds the
    // file contents uncompressed.
    let pem = std::fs::read(p.path().join(key)).unwrap();
    let body = &pem[30..80];
    let m: Value =
        serde_json::from_slice(&std::fs::read(arts.join("manifest.json")).unwrap()).unwrap();
    let digest = m["context_digest"].as_str().unwrap();
    let pack =
        image_cache()
            .join("packs")
            .join(format!("{}-{}", &digest[..32], m["source_date_epoch"]));
    let files = walk_files(&pack);
    assert!(!files.is_empty(), "no pack at {}", pack.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(body.len()).any(|w| w == body),
            "the key is in {}",
            f.display()
        );
    }
    world.assert_clean();
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
