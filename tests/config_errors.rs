//! Malformed builder files: each error names the file, the line and the key, and no machine
//! is started (no machine directory is ever created, no QEMU runs).

mod common;

use common::*;

const GOOD: &str = r#"backend = "qemu"
distro = "debian"
suite = "bookworm"
arch = "amd64"
"#;

/// (file text, expected line, expected key, a fragment of the message)
const CASES: &[(&str, usize, &str, &str)] = &[
    // A misspelt key.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nmemroy = \"1G\"\n",
        5,
        "memroy",
        "unknown field",
    ),
    // A size without a unit.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nmemory = 2048\n",
        5,
        "memory",
        "unit",
    ),
    // An architecture runner does not know.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"sparc\"\n",
        4,
        "arch",
        "unknown variant",
    ),
    // Too many vCPUs.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nvcpus = 1000\n",
        5,
        "vcpus",
        "between 1 and 64",
    ),
    // A backend that does not exist.
    (
        "backend = \"vmware\"\ndistro = \"debian\"\n",
        1,
        "backend",
        "unknown backend",
    ),
    // Another distribution.
    (
        "backend = \"qemu\"\ndistro = \"fedora\"\nsuite = \"40\"\narch = \"amd64\"\n",
        2,
        "distro",
        "unsupported distro",
    ),
    // A package name that would be an option to mmdebstrap.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\npackages = [\"gcc\", \"--evil\"]\n",
        5,
        "packages",
        "not a Debian package name",
    ),
    // A disk too small to hold Debian.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\ndisk = \"10M\"\n",
        5,
        "disk",
        "outside",
    ),
    // A boot timeout that is not a duration.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nboot_timeout = \"soon\"\n",
        5,
        "boot_timeout",
        "90s",
    ),
    // A value of the wrong type.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nvcpus = \"two\"\n",
        5,
        "vcpus",
        "invalid type",
    ),
    // A required key missing: the error still names it.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\narch = \"amd64\"\n",
        1,
        "suite",
        "missing field",
    ),
    // Not TOML at all.
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = bookworm\n",
        3,
        "suite",
        "",
    ),
    // EC2: a misspelt key (the singular of `instance_types`).
    (
        "backend = \"ec2\"\nami = \"ami-1\"\ninstance_type = \"t3.micro\"\n",
        3,
        "instance_type",
        "unknown field",
    ),
    // EC2: something that is not an instance type.
    (
        "backend = \"ec2\"\nami = \"ami-1\"\nssh_cidr = \"127.0.0.1/32\"\ninstance_types = [\"large\"]\n",
        4,
        "instance_types",
        "instance types like",
    ),
    // EC2: an SSH source that is not a CIDR.
    (
        "backend = \"ec2\"\nami = \"ami-1\"\ninstance_types = [\"t3.micro\"]\nssh_cidr = \"my laptop\"\n",
        4,
        "ssh_cidr",
        "not an IPv4 CIDR",
    ),
    // EC2: a lifetime past the limit.
    (
        "backend = \"ec2\"\nami = \"ami-1\"\ninstance_types = [\"t3.micro\"]\nsecurity_group = \"sg-1\"\nmax_lifetime = \"3 days\"\n",
        5,
        "max_lifetime",
        "between 1s and 1day",
    ),
    // Cloud images: a download that nothing verifies.
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { url = \"https://example.invalid/x.qcow2\" }\n",
        3,
        "image.sha256",
        "must be verified",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { url = \"https://example.invalid/x.qcow2\", sha256 = \"abc\" }\n",
        3,
        "image.sha256",
        "64 hexadecimal",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { path = \"x.img\", checksum_url = \"https://example.invalid/SUMS\" }\n",
        3,
        "image.checksum_url",
        "checked with `sha256`",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { url = \"ftp://example.invalid/x.qcow2\", sha256 = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }\n",
        3,
        "image.url",
        "http:// or https://",
    ),
    // Plain http that a checksum file, not a pinned digest, would vouch for.
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { url = \"http://example.invalid/x.qcow2\", checksum_url = \"https://example.invalid/SUMS\" }\n",
        3,
        "image.url",
        "pinned `sha256`",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { url = \"https://example.invalid/x.qcow2\", checksum_url = \"http://example.invalid/SUMS\" }\n",
        3,
        "image.checksum_url",
        "pinned `sha256`",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { urll = \"https://example.invalid/x.qcow2\" }\n",
        3,
        "urll",
        "unknown field",
    ),
    // A cloud image and a Debian suite at once.
    (
        "backend = \"qemu\"\narch = \"amd64\"\nsuite = \"bookworm\"\nimage = { path = \"x.img\" }\n",
        3,
        "suite",
        "not both",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { path = \"x.img\" }\nssh_user = \"Build User\"\n",
        4,
        "ssh_user",
        "not a user name",
    ),
    (
        "backend = \"qemu\"\narch = \"arm64\"\nimage = { path = \"x.img\" }\nfirmware = \"bios\"\n",
        4,
        "firmware",
        "UEFI only",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { path = \"x.img\" }\nbake_script = \"absent.sh\"\n",
        4,
        "bake_script",
        "cannot read",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { path = \"x.img\" }\ninit = \"systemd\"\n",
        4,
        "init",
        "boots its own init",
    ),
    (
        "backend = \"qemu\"\narch = \"amd64\"\nimage = { path = \"x.img\" }\npackages = [\"gcc\", \"x;rm\"]\n",
        4,
        "packages",
        "not a package name",
    ),
    (
        "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\narch = \"amd64\"\nssh_user = \"admin\"\n",
        5,
        "ssh_user",
        "applies to cloud images",
    ),
];

#[test]
fn malformed_builders_name_file_line_and_key_and_start_nothing() {
    for (i, (text, line, key, fragment)) in CASES.iter().enumerate() {
        let name = format!("bad{i}");
        let project = project_with(&[(&name, text)]);
        let world = World::with_project(project.path().to_owned());
        let out = world.run(&["vm", "run", &name, "--", "true"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "case {i} should fail");
        let location = format!("builders/{name}.toml:{line}:");
        assert!(
            err.contains(&location),
            "case {i}: no `{location}` in: {err}"
        );
        assert!(
            err.contains(&format!("key `{key}`")),
            "case {i}: no key `{key}` in: {err}"
        );
        assert!(
            err.contains(fragment),
            "case {i}: no `{fragment}` in: {err}"
        );
        assert!(
            !world.machines().exists(),
            "case {i}: a machine was started"
        );
        world.assert_clean();
    }
}

#[test]
fn a_missing_builder_is_named() {
    let project = project_with(&[("good", GOOD)]);
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["vm", "run", "absent", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("builders/absent.toml"),
        "{}",
        stderr(&out)
    );
    assert!(!world.machines().exists());
}

/// A target's `vcpus`/`memory` go through its builder's own checks; on an EC2 builder (whose
/// instance type decides them) they are refused, never silently ignored; its `timeout` must
/// end before the builder's `max_lifetime`.
#[test]
fn target_overrides_are_checked_by_their_builder() {
    const EC2: &str = "backend = \"ec2\"\nami = \"ami-1\"\ninstance_types = [\"t3.micro\"]\nsecurity_group = \"sg-1\"\n";
    let cases = [
        ("good", "memory = \"64M\"", "memory", "outside 128M..=256G"),
        ("good", "vcpus = 0", "vcpus", "between 1 and 64"),
        ("cloud", "vcpus = 4", "vcpus", "runs on EC2"),
        ("cloud", "memory = \"8G\"", "memory", "runs on EC2"),
        // A machine would end itself (its dead-man switch) before the target's timeout.
        (
            "cloud",
            "timeout = \"4h\"",
            "timeout",
            "longer than builder `cloud`'s max_lifetime 3h",
        ),
    ];
    for (builder, line, key, fragment) in cases {
        let project = Project::new()
            .builder("good", GOOD)
            .builder("cloud", EC2)
            .file("build.sh", "#!/bin/sh\n")
            .toml(&format!(
                "[target.t]\nbuilder = \"{builder}\"\nscript = \"build.sh\"\n{line}\n"
            ))
            .done();
        let world = World::with_project(project.path().to_owned());
        let out = world.run(&["check"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{line} should be refused");
        assert!(err.contains("runner.toml:4:"), "{line}: no line in {err}");
        assert!(
            err.contains(&format!("key `{key}`")),
            "{line}: no key in {err}"
        );
        assert!(err.contains(fragment), "{line}: no `{fragment}` in {err}");
    }
}

/// A target's `cache` paths, `cache_key` and `cache_transfer`, and `[limits] max_cache_size`, are checked at
/// load time with the file, line and key.
#[test]
fn cache_paths_keys_and_limits_are_checked_at_load_time() {
    let cases = [
        ("cache = [\"var/cache\"]", "cache", "absolute guest path"),
        ("cache = [\"/build/out\"]", "cache", "inside `/build`"),
        ("cache = [\"/var/cache/a b\"]", "cache", "letters, digits"),
        ("cache = [\"/var/../etc\"]", "cache", "normal path"),
        (
            "cache = [\"/var/cache\", \"/var/cache/apt\"]",
            "cache",
            "may not nest",
        ),
        ("cache_key = \"apt\"", "cache_key", "without cache"),
        (
            "cache_transfer = \"fetch\"",
            "cache_transfer",
            "without cache",
        ),
        (
            "cache = [\"/c\"]\ncache_transfer = \"disk\"",
            "cache_transfer",
            "unknown variant",
        ),
        (
            "cache = [\"/c\"]\ncache_key = \"../x\"",
            "cache_key",
            "only letters",
        ),
        (
            "[limits]\nmax_cache_size = \"1M\"",
            "max_cache_size",
            "outside 16M..=256G",
        ),
    ];
    for (lines, key, fragment) in cases {
        let project = Project::new()
            .builder("good", GOOD)
            .file("build.sh", "#!/bin/sh\n")
            .toml(&format!(
                "[target.t]\nbuilder = \"good\"\nscript = \"build.sh\"\n{lines}\n"
            ))
            .done();
        let world = World::with_project(project.path().to_owned());
        let out = world.run(&["check"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{lines} should be refused");
        let line = 4 + lines.lines().count() - 1;
        assert!(
            err.contains(&format!("runner.toml:{line}:")),
            "{lines}: {err}"
        );
        assert!(err.contains(&format!("key `{key}`")), "{lines}: {err}");
        assert!(err.contains(fragment), "{lines}: no `{fragment}` in {err}");
    }
}

/// A builder's `cache` goes through the same checks, naming the builder file.
#[test]
fn a_builder_s_cache_is_checked_in_its_own_file() {
    let project = Project::new()
        .builder("good", &format!("{GOOD}cache = [\"/build\"]\n"))
        .file("build.sh", "#!/bin/sh\n")
        .toml("[target.t]\nbuilder = \"good\"\nscript = \"build.sh\"\n")
        .done();
    let world = World::with_project(project.path().to_owned());
    let out = world.run(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("good.toml:5:"), "{err}");
    assert!(
        err.contains("key `cache`") && err.contains("inside `/build`"),
        "{err}"
    );
}
