//! The inputs digest and schema versions; and manifests as the untrusted input to `reproduce`,
//! `verify`, `why` and `artifacts` that they are: a table of hostile fields, each refused by
//! name, and arbitrary input that must come back as an error, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::config::{Shape, Size};

#[test]
fn inputs_digest_changes_with_every_input() {
    let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
    let globs = vec!["*".to_owned()];
    let base = Inputs {
        recipe_digest: "r",
        context_digest: "c",
        script_sha256: "s",
        env: &env,
        epoch: 1,
        globs: &globs,
    };
    let d = base.digest();
    assert_eq!(d, Inputs { ..base }.digest());
    let env2 = BTreeMap::from([("A".to_owned(), "2".to_owned())]);
    let globs2 = vec!["*.deb".to_owned()];
    let variants = [
        Inputs {
            recipe_digest: "r2",
            ..Inputs { ..base }
        }
        .digest(),
        Inputs {
            context_digest: "c2",
            ..Inputs { ..base }
        }
        .digest(),
        Inputs {
            script_sha256: "s2",
            ..Inputs { ..base }
        }
        .digest(),
        Inputs {
            env: &env2,
            ..Inputs { ..base }
        }
        .digest(),
        Inputs {
            epoch: 2,
            ..Inputs { ..base }
        }
        .digest(),
        Inputs {
            globs: &globs2,
            ..Inputs { ..base }
        }
        .digest(),
    ];
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(*v, d, "input {i} does not change the digest");
    }
}

#[test]
fn unknown_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.json");
    std::fs::write(&p, r#"{"schema": 99, "target": "x"}"#).unwrap();
    let e = Manifest::read(&p).unwrap_err().to_string();
    assert!(e.contains("schema version 99"), "{e}");
}

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A manifest as runner writes one, as JSON.
fn valid() -> Value {
    let origin: Origin = serde_json::from_value(json!({"distro": "debian", "suite": "bookworm",
        "arch": "amd64", "packages": ["gcc"], "disk": "4G"}))
    .unwrap();
    let tree = BTreeMap::from([("main.c".to_owned(), format!("sha256:{HEX}"))]);
    let env = BTreeMap::from([("CFLAGS".to_owned(), "-O2".to_owned())]);
    let (excludes, globs) = (vec!["artifacts".to_owned()], vec!["hello".to_owned()]);
    let build = Build {
        target: "hello",
        builder: "bookworm-gcc",
        origin: &origin,
        context_digest: HEX,
        context_tree: &tree,
        context_excludes: &excludes,
        script_name: "make.sh",
        script: b"#!/bin/sh\nmake\n",
        globs: &globs,
        env: &env,
        epoch: 1_700_000_000,
        started_unix: 1_700_000_001,
        shape: Some(Shape {
            vcpus: 2,
            memory: Size(1 << 30),
        }),
    };
    let artifact = ArtifactRecord {
        path: RelPath::new("hello").unwrap(),
        size: 5,
        sha256: Sha256::new(HEX).unwrap(),
        uri: "file:///p/artifacts/hello/hello".into(),
    };
    let mut m = Manifest::new(&build, HEX, vec![artifact]).unwrap();
    m.cache = Some(crate::manifest::CacheRecord {
        key: FileName::new("hello-0123456789ab").unwrap(),
        generation: 3,
        read_sha256: Sha256::new(HEX).unwrap(),
        saved_sha256: Sha256::new(HEX).unwrap(),
    });
    serde_json::from_slice(&m.to_json()).unwrap()
}

fn read(v: &Value) -> Result<Manifest> {
    Manifest::from_slice(&serde_json::to_vec(v).unwrap(), Path::new("m.json"))
}

/// `field` set to `value` (a JSON pointer), and what the error must name.
fn hostile() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("/script/name", json!("/tmp/pwned"), "script.name"),
        ("/script/name", json!("../../x"), "script.name"),
        ("/script/name", json!(".."), "script.name"),
        ("/target", json!("../etc"), "target"),
        ("/target", json!("a/b"), "target"),
        ("/target", json!("-rf"), "target"),
        (
            "/builder/name",
            json!("../../builders/evil"),
            "builder.name",
        ),
        (
            "/builder/recipe/suite",
            json!("--help"),
            "builder.recipe.suite",
        ),
        (
            "/builder/recipe/suite",
            json!("bookworm extra"),
            "builder.recipe.suite",
        ),
        (
            "/builder/recipe/packages/0",
            json!("--hook-dir=/tmp"),
            "builder.recipe.packages[0]",
        ),
        (
            "/builder/recipe/packages/0",
            json!("gcc;rm"),
            "builder.recipe.packages[0]",
        ),
        (
            "/builder/recipe/distro",
            json!("arch"),
            "builder.recipe.distro",
        ),
        ("/builder/recipe/disk", json!("1M"), "builder.recipe.disk"),
        (
            "/builder/recipe_digest",
            json!("abc"),
            "builder.recipe_digest",
        ),
        (
            "/builder/recipe_digest",
            json!(HEX.to_uppercase()),
            "builder.recipe_digest",
        ),
        ("/base_image_sha256", json!("ami-1234"), "base_image_sha256"),
        ("/base_image_sha256", json!(""), "base_image_sha256"),
        ("/inputs_digest", json!("zz"), "inputs_digest"),
        (
            "/context_digest",
            json!(format!("{HEX}0")),
            "context_digest",
        ),
        ("/script/sha256", json!("short"), "script.sha256"),
        (
            "/artifacts/0/path",
            json!("/etc/shadow"),
            "artifacts[0].path",
        ),
        ("/artifacts/0/path", json!("../x"), "artifacts[0].path"),
        (
            "/artifacts/0/uri",
            json!("file:///etc/shadow"),
            "artifacts[0].uri",
        ),
        (
            "/artifacts/0/uri",
            json!("s3://other-bucket/x/hello"),
            "artifacts[0].uri",
        ),
        (
            "/artifacts/0/uri",
            json!("http://evil/hello/hello"),
            "artifacts[0].uri",
        ),
        ("/artifacts/0/sha256", json!("00"), "artifacts[0].sha256"),
        ("/machine/vcpus", json!(100000), "machine.vcpus"),
        ("/machine/vcpus", json!(0), "machine.vcpus"),
        ("/machine/memory_mib", json!(u64::MAX), "machine.memory_mib"),
        ("/env", json!({"RUNNER_X": "1"}), "env"),
        ("/env", json!({"A B": "1"}), "env"),
        ("/started_unix", json!(u64::MAX), "started_unix"),
        ("/finished_unix", json!(u64::MAX), "finished_unix"),
        ("/context_tree", json!({"../x": "dir"}), "context_tree"),
        ("/context_tree", json!({"x": "whatever"}), "context_tree.x"),
        ("/runner_version", json!("1\n2"), "runner_version"),
        ("/cache/key", json!("../caches"), "cache"),
        ("/cache/read_sha256", json!("00"), "cache"),
        ("/cache/generation", json!(-1), "cache"),
    ]
}

#[test]
fn the_fixture_is_a_manifest_runner_reads() {
    read(&valid()).unwrap();
}

#[test]
fn every_hostile_field_is_refused_by_name() {
    for (pointer, value, field) in hostile() {
        let mut v = valid();
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}")) = value.clone();
        let e = read(&v).expect_err(&format!("{pointer} = {value} was accepted"));
        let text = crate::error::chain(&e);
        assert!(text.contains(field), "{pointer} = {value}: {text}");
    }
}

#[test]
fn a_cloud_recipe_is_held_to_the_builder_file_checks() {
    let cloud = json!({"distro": "cloud", "suite": "", "arch": "amd64", "packages": [],
        "disk": "4G", "cloud": {"url": "https://example.invalid/x.img", "sha256": HEX,
        "ssh_user": "ubuntu", "firmware": "uefi"}});
    let mut v = valid();
    v["builder"]["recipe"] = cloud.clone();
    read(&v).unwrap();
    for (key, value) in [
        ("sha256", json!("../../x")),
        ("url", json!("file:///etc/shadow")),
        ("ssh_user", json!("root;id")),
    ] {
        let mut bad = v.clone();
        bad["builder"]["recipe"]["cloud"][key] = value;
        let e = crate::error::chain(&read(&bad).unwrap_err());
        assert!(e.contains(&format!("cloud.{key}")), "{key}: {e}");
    }
    let mut relative = v.clone();
    relative["builder"]["recipe"]["cloud"] =
        json!({"path": "../img", "sha256": HEX, "ssh_user": "u", "firmware": "bios"});
    assert!(read(&relative).is_err());
}

#[test]
fn an_ec2_origin_needs_an_ami_id() {
    let mut v = valid();
    v["builder"]["recipe"] = json!({"backend": "ec2", "ami": {"Id": "ami-12345678"}, "image": "ami-12345678", "arch": "amd64"});
    v["base_image_sha256"] = json!("ami-12345678");
    read(&v).unwrap();
    v["builder"]["recipe"]["image"] = json!("ami-1234");
    assert!(crate::error::chain(&read(&v).unwrap_err()).contains("builder.recipe"));
}

/// Any JSON value at any of the manifest's fields.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,80}".prop_map(Value::from),
        "[a-f0-9]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const POINTERS: &[&str] = &[
    "/schema",
    "/target",
    "/builder",
    "/builder/name",
    "/builder/recipe",
    "/builder/recipe/suite",
    "/builder/recipe/packages",
    "/builder/recipe/cloud",
    "/builder/recipe_digest",
    "/base_image_sha256",
    "/context_digest",
    "/context_excludes",
    "/script",
    "/script/name",
    "/artifact_globs",
    "/env",
    "/source_date_epoch",
    "/inputs_digest",
    "/started_unix",
    "/artifacts",
    "/artifacts/0",
    "/artifacts/0/path",
    "/artifacts/0/uri",
    "/context_tree",
    "/machine",
    "/machine/memory_mib",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Manifest::from_slice(&bytes, Path::new("m.json")).is_err());
    }

    #[test]
    fn any_value_at_any_field_reads_or_is_refused_without_a_panic(
        at in 0..POINTERS.len(),
        value in any_json(),
    ) {
        let mut v = valid();
        if let Some(slot) = v.pointer_mut(POINTERS[at]) {
            *slot = value;
        }
        if let Ok(m) = read(&v) {
            // Whatever was accepted is safe to use as runner uses it.
            prop_assert!(crate::config::names::is_component_name(&m.target));
            prop_assert_eq!(m.inputs_digest.short().len(), 16);
            let _ = build_id(&m.inputs_digest, m.started_unix);
            let _ = crate::provenance::statement(
                &m,
                &crate::provenance::Documents { sha256sums: b"", manifest: b"" },
                "urn:x",
            );
        }
    }
}

#[test]
fn a_build_cache_is_a_byproduct_of_the_provenance_never_an_input() {
    let with = read(&valid()).unwrap();
    let mut without = with.clone();
    without.cache = None;
    let docs = crate::provenance::Documents {
        sha256sums: b"",
        manifest: b"",
    };
    let s = crate::provenance::statement(&with, &docs, "urn:x");
    let by = &s.predicate["runDetails"]["byproducts"];
    assert_eq!(by[0]["name"], "cache/hello-0123456789ab/read");
    assert_eq!(by[0]["digest"]["sha256"], HEX);
    assert_eq!(by[0]["annotations"]["generation"], 3);
    assert_eq!(by[1]["name"], "cache/hello-0123456789ab/saved");
    let plain = crate::provenance::statement(&without, &docs, "urn:x");
    // (The inputs digest is made from a `Build`, which has no cache at all.)
    assert_eq!(
        s.predicate["buildDefinition"], plain.predicate["buildDefinition"],
        "the cache changes nothing the build is defined by"
    );
}
