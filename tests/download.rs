//! Downloads from a hostile server, host-side (no machine boots): redirects that leave the
//! loopback for an unpinned image, a server that trickles, a 206 at the wrong offset, a
//! resume that must name the validator it began with, and partial downloads left for gc.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::{ETAG, Faults, FileServer};
use common::*;
use runner::config::cloud::{Checksum, ImageSource};
use runner::machine::Report;
use runner::machine::qemu::image::download::fetch_within;
use runner::machine::qemu::image::http::Limits;

const NAME: &str = "image.qcow2";

/// A directory serving a 256 KiB file of varied bytes, and its sha256.
fn served() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..256u32 << 10).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join(NAME), &bytes).unwrap();
    let sha = runner::digest::sha256_hex(&bytes);
    (dir, sha)
}

fn pinned(url: String, sha: &str) -> ImageSource {
    ImageSource::Url {
        url,
        checksum: Checksum::Sha256(sha.to_owned()),
    }
}

fn fetch(
    downloads: &Path,
    source: &ImageSource,
    sha: &str,
    limits: Limits,
) -> Result<PathBuf, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(fetch_within(
        downloads,
        "hostile",
        source,
        sha,
        &limits,
        &Report::Lines,
    ))
    .map_err(|e| runner::error::chain(&e))
}

#[test]
fn a_resume_names_the_validator_it_began_with() {
    let (dir, sha) = served();
    let server = FileServer::start(dir.path().to_owned(), NAME, 1, 100_000);
    let downloads = tempfile::tempdir().unwrap();
    let limits = Limits {
        attempts: 2,
        ..Limits::DEFAULT
    };
    let got = fetch(
        downloads.path(),
        &pinned(server.url(NAME), &sha),
        &sha,
        limits,
    )
    .unwrap();
    assert_eq!(runner::digest::sha256_file(&got).unwrap(), sha);
    let reqs = server.requests_for(NAME);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(reqs[1].if_range.as_deref(), Some(ETAG), "{reqs:?}");
    let left: Vec<_> = std::fs::read_dir(downloads.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".validator")),
        "{left:?}"
    );
}

#[test]
fn a_range_at_the_wrong_offset_restarts_from_zero() {
    let (dir, sha) = served();
    let server = FileServer::with(
        dir.path().to_owned(),
        Faults {
            wrong_range: Some(NAME.into()),
            ..Faults::default()
        },
    );
    let downloads = tempfile::tempdir().unwrap();
    // A partial download from an earlier run: the true first 100000 bytes.
    let bytes = std::fs::read(dir.path().join(NAME)).unwrap();
    std::fs::write(
        downloads.path().join(format!("{sha}.part")),
        &bytes[..100_000],
    )
    .unwrap();
    let limits = Limits {
        attempts: 2,
        ..Limits::DEFAULT
    };
    let got = fetch(
        downloads.path(),
        &pinned(server.url(NAME), &sha),
        &sha,
        limits,
    )
    .unwrap();
    assert_eq!(runner::digest::sha256_file(&got).unwrap(), sha);
    let reqs = server.requests_for(NAME);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(
        reqs[1].range, None,
        "the retry did not start from zero: {reqs:?}"
    );
}

#[test]
fn a_trickling_server_is_cut_off() {
    let (dir, sha) = served();
    let server = FileServer::with(
        dir.path().to_owned(),
        Faults {
            trickle: Some((NAME.into(), Duration::from_millis(100))),
            ..Faults::default()
        },
    );
    let downloads = tempfile::tempdir().unwrap();
    let limits = Limits {
        attempts: 1,
        window: Duration::from_secs(1),
        floor: 1024,
        ..Limits::DEFAULT
    };
    let err = fetch(
        downloads.path(),
        &pinned(server.url(NAME), &sha),
        &sha,
        limits,
    )
    .unwrap_err();
    assert!(
        err.contains("too slow") && err.contains("builder `hostile`"),
        "{err}"
    );
    assert!(!downloads.path().join(format!("{sha}.img")).exists());
}

#[test]
fn an_unpinned_image_is_not_redirected_off_the_loopback() {
    let (dir, sha) = served();
    // 192.0.2.0/24 is TEST-NET-1: never routed, so nothing could answer it anyway.
    let server = FileServer::with(
        dir.path().to_owned(),
        Faults {
            redirects: vec![
                ("away".into(), "http://192.0.2.1/image.qcow2".into()),
                ("moved".into(), format!("/{NAME}")),
            ],
            ..Faults::default()
        },
    );
    let downloads = tempfile::tempdir().unwrap();
    let unpinned = |path: &str| ImageSource::Url {
        url: server.url(path),
        checksum: Checksum::File(server.url("SHA256SUMS")),
    };
    let limits = Limits {
        attempts: 3,
        ..Limits::DEFAULT
    };
    let err = fetch(downloads.path(), &unpinned("away"), &sha, limits).unwrap_err();
    assert!(
        err.contains("refusing a redirect to `http://192.0.2.1/"),
        "{err}"
    );
    assert_eq!(
        server.requests_for("away").len(),
        1,
        "a refused redirect was retried"
    );
    // On the loopback, it is followed.
    let got = fetch(downloads.path(), &unpinned("moved"), &sha, limits).unwrap();
    assert_eq!(runner::digest::sha256_file(&got).unwrap(), sha);
}

#[test]
fn gc_finds_partial_downloads_nobody_holds() {
    let cache = tempfile::tempdir().unwrap();
    let downloads = cache.path().join("images/downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (dead, live) = ("a".repeat(64), "b".repeat(64));
    for f in [
        format!("{dead}.part"),
        format!("{dead}.validator"),
        format!("{live}.part"),
    ] {
        std::fs::write(downloads.join(f), b"x").unwrap();
    }
    // A download in progress holds its lock.
    let lock = std::fs::File::create(downloads.join(format!("{live}.lock"))).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let project = project_with(&[]);
    let world = World::with_project(project.path().to_owned());
    let gc = |args: &[&str]| {
        let mut c = world.cmd();
        c.env("RUNNER_CACHE_DIR", cache.path());
        run_shown(c, args)
    };
    let out = stdout(&gc(&["gc"]));
    assert!(
        out.contains(&format!(
            "orphan  unfinished download {}",
            downloads.join(format!("{dead}.part")).display()
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{dead}.validator")), "{out}");
    assert!(
        !out.contains(&live),
        "a download in progress was listed: {out}"
    );
    assert!(
        downloads.join(format!("{dead}.part")).exists(),
        "a dry run removed something"
    );
    let out = stdout(&gc(&["gc", "--force"]));
    assert!(out.contains("removed unfinished download"), "{out}");
    assert!(!downloads.join(format!("{dead}.part")).exists());
    assert!(!downloads.join(format!("{dead}.validator")).exists());
    assert!(downloads.join(format!("{live}.part")).exists());
}
