//! Every locked crate against the RustSec advisory database, offline: a vulnerability, or an
//! unmaintained or unsound crate, fails the suite unless `.config/advisories.toml` accepts
//! it with a reason. The database is a snapshot of plain files (`$RUNNER_ADVISORY_DB`, else
//! `../shared/advisory-db` beside the checkout); nothing is fetched.

use std::path::PathBuf;
use std::str::FromStr;

use rustsec::advisory::{Id, Informational};
use rustsec::report::{Report, Settings};
use rustsec::{Database, Lockfile};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn database() -> Database {
    let path = std::env::var_os("RUNNER_ADVISORY_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/advisory-db"));
    Database::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the advisory database at {} ({e}); set RUNNER_ADVISORY_DB",
            path.display()
        )
    })
}

/// The accepted advisories; each must give a reason.
fn accepted() -> Vec<Id> {
    #[derive(serde::Deserialize)]
    struct File {
        ignore: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        reason: String,
    }
    let text = std::fs::read_to_string(repo().join(".config/advisories.toml")).unwrap();
    let file: File = toml::from_str(&text).expect(".config/advisories.toml");
    file.ignore
        .into_iter()
        .map(|e| {
            assert!(
                !e.reason.trim().is_empty(),
                "{}: an accepted advisory needs a reason",
                e.id
            );
            Id::from_str(&e.id).expect("an advisory id")
        })
        .collect()
}

/// What the database says of `lockfile`, beyond what is accepted: one line per finding.
fn findings(db: &Database, lockfile: &Lockfile, accepted: Vec<Id>) -> Vec<String> {
    let settings = Settings {
        ignore: accepted.clone(),
        informational_warnings: vec![Informational::Unmaintained, Informational::Unsound],
        ..Default::default()
    };
    let report = Report::generate(db, lockfile, &settings);
    let mut out: Vec<String> = report
        .vulnerabilities
        .list
        .iter()
        .map(|v| {
            format!(
                "{} {} {}: {}",
                v.advisory.id, v.package.name, v.package.version, v.advisory.title
            )
        })
        .collect();
    for w in report.warnings.values().flatten() {
        let Some(a) = &w.advisory else { continue };
        if !accepted.contains(&a.id) {
            out.push(format!(
                "{} {} {} ({:?}): {}",
                a.id, w.package.name, w.package.version, w.kind, a.title
            ));
        }
    }
    out
}

#[test]
fn no_locked_crate_has_an_advisory_that_is_not_accepted() {
    // `RUNNER_LOCKFILE` points the check at another lockfile (to see it fail, e.g.).
    let path = std::env::var_os("RUNNER_LOCKFILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("Cargo.lock"));
    let lockfile = Lockfile::load(path).unwrap();
    let found = findings(&database(), &lockfile, accepted());
    assert!(
        found.is_empty(),
        "advisories against Cargo.lock (fix them, or accept each in .config/advisories.toml with \
         a reason):\n  {}",
        found.join("\n  ")
    );
}

/// The check itself: a lockfile with a crate version that has a known advisory is caught.
#[test]
fn a_crate_with_a_known_advisory_is_caught() {
    let lockfile = Lockfile::from_str(
        "version = 3\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
    )
    .unwrap();
    let found = findings(&database(), &lockfile, vec![]);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("RUSTSEC-2021-0003 smallvec")),
        "{found:?}"
    );
    // Accepted with a reason, it passes.
    let id = Id::from_str("RUSTSEC-2021-0003").unwrap();
    assert!(findings(&database(), &lockfile, vec![id]).is_empty());
}
