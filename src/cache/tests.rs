//! Generations on the host, without a machine: a layer made with `qemu-img` stands in for a
//! machine's.

use std::path::Path;
use std::process::Command;

use super::*;

/// The key of target `target`'s cache of `paths`, or of its `cache_key`.
fn decl(paths: &[&str], key: Option<&str>) -> (Vec<String>, Option<String>) {
    (
        paths.iter().map(|p| p.to_string()).collect(),
        key.map(str::to_owned),
    )
}

impl Key {
    fn of_target(
        target: &str,
        (paths, key): (Vec<String>, Option<String>),
        recipe: &str,
    ) -> (Key, About) {
        let name = match &key {
            Some(k) => (k.as_str(), true),
            None => (target, false),
        };
        Key::of(Path::new("/p"), name, &paths, recipe)
    }
}

/// A copy-on-write layer over `base` with `bytes` written into it.
fn layer_over(base: &Path, at: &Path, bytes: usize) {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(at)
        .arg("1T")
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .stdout(std::process::Stdio::null())
        .arg(format!("write -P 0x5a 64M {bytes}"))
        .arg(at)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn keys_differ_by_target_recipe_and_paths_and_cache_key_widens_on_purpose() {
    let a = Key::of_target("a", decl(&["/x"], None), "r1").0;
    assert_eq!(a, Key::of_target("a", decl(&["/x"], None), "r1").0);
    assert_ne!(a, Key::of_target("b", decl(&["/x"], None), "r1").0);
    assert_ne!(a, Key::of_target("a", decl(&["/x"], None), "r2").0);
    assert_ne!(a, Key::of_target("a", decl(&["/y"], None), "r1").0);
    let shared = Key::of_target("a", decl(&["/x"], Some("apt")), "r1").0;
    assert_eq!(
        shared,
        Key::of_target("b", decl(&["/x"], Some("apt")), "r1").0
    );
    assert!(shared.as_str().starts_with("apt-"));
}

#[tokio::test]
async fn a_generation_is_committed_only_by_commit_and_a_dropped_part_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let caches = Caches::new(home.path());
    let (key, about) = Key::of_target("t", decl(&["/var/cache/x"], None), "r");
    let g0 = caches.current(&key, &about, 64 << 20).unwrap();
    assert_eq!(g0.n, 0);
    assert_eq!(g0.sha256, crate::digest::sha256_file(&g0.path).unwrap());
    let layer = home.path().join("layer.qcow2");
    layer_over(&g0.path, &layer, 1 << 20);

    // A build that fails after flattening: nothing changes.
    let dropped = caches.flatten(&key, &layer, 1 << 30).await.unwrap();
    let part = dropped.part.clone();
    assert!(part.exists());
    drop(dropped);
    assert!(!part.exists() && !part.with_extension("lock").exists());
    assert_eq!(generations(&caches.dir(&key)), vec![0]);

    // Too large: refused, with the size and the limit named.
    let e = caches
        .flatten(&key, &layer, 1 << 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("over max_cache_size 1M"), "{e}");
    assert_eq!(generations(&caches.dir(&key)), vec![0]);

    let p = caches.flatten(&key, &layer, 1 << 30).await.unwrap();
    let sha = p.sha256.clone();
    assert_eq!(p.commit().unwrap(), 1);
    drop(g0);
    let g1 = caches.current(&key, &about, 64 << 20).unwrap();
    assert_eq!((g1.n, g1.sha256.as_str()), (1, sha.as_str()));
    let listed = caches.list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].in_use, "a build reads generation 1");
    assert_eq!(listed[0].about.as_ref().unwrap().name, "t");
}

#[tokio::test]
async fn pruning_keeps_the_newest_two_and_any_generation_a_build_still_reads() {
    let home = tempfile::tempdir().unwrap();
    let caches = Caches::new(home.path());
    let (key, about) = Key::of_target("t", decl(&["/c"], None), "r");
    let reader = caches.current(&key, &about, 64 << 20).unwrap();
    let layer = home.path().join("layer.qcow2");
    layer_over(&reader.path, &layer, 4096);
    for want in 1..=4 {
        let n = caches
            .flatten(&key, &layer, 1 << 30)
            .await
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(n, want);
    }
    // Generation 0 is still read (its build flattens from it later); 1 and 2 are not.
    assert_eq!(generations(&caches.dir(&key)), vec![0, 3, 4]);
    drop(reader);
    let fresh = layer_fresh(&caches, &key, &about, home.path());
    caches
        .flatten(&key, &fresh, 1 << 30)
        .await
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(generations(&caches.dir(&key)), vec![4, 5]);
}

fn layer_fresh(caches: &Caches, key: &Key, about: &About, at: &Path) -> std::path::PathBuf {
    let g = caches.current(key, about, 64 << 20).unwrap();
    let layer = at.join("layer2.qcow2");
    layer_over(&g.path, &layer, 4096);
    layer
}

#[tokio::test]
async fn gc_removes_a_dead_makers_part_and_keeps_a_live_one() {
    use crate::leftovers::{Finding, Sweeper};
    let home = tempfile::tempdir().unwrap();
    let caches = Caches::new(home.path());
    let (key, about) = Key::of_target("t", decl(&["/c"], None), "r");
    let g = caches.current(&key, &about, 64 << 20).unwrap();
    let layer = home.path().join("layer.qcow2");
    layer_over(&g.path, &layer, 4096);
    let live = caches.flatten(&key, &layer, 1 << 30).await.unwrap();
    let dead = caches.dir(&key).join("gen-next.0000.1.part");
    std::fs::write(&dead, b"half").unwrap();
    let sweeper = list::PartSweeper {
        caches: caches.clone(),
    };
    let found = sweeper.find().await;
    let mut orphans = vec![];
    for f in found {
        let Finding::Found(l) = f else { panic!() };
        if l.in_use {
            assert!(l.what.contains(&live.part.display().to_string()));
        } else {
            orphans.push(l.what.clone());
            l.remove().await.unwrap();
        }
    }
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(!dead.exists() && live.part.exists());

    // The next build of the key clears a dead part itself, and keeps the live one.
    std::fs::write(&dead, b"half").unwrap();
    drop(g);
    let _g = caches.current(&key, &about, 64 << 20).unwrap();
    assert!(!dead.exists() && live.part.exists());
}
