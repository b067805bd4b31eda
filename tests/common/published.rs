//! Published builds made without a machine: a manifest, its checksum file and its provenance
//! (signed or not) exactly as a publish writes them, for tests of what reads builds back
//! (`verify`, cache hits, `artifacts`) and of what a hostile store or directory can do.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use runner::artifacts::ArtifactFile;
use runner::machine::Origin;
use runner::machine::qemu::image::ImageRecord;
use runner::manifest::{ArtifactRecord, Build, Manifest};
use runner::provenance::keys::SigningKey;
use runner::store::Records;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed([seed; 32])
}

/// A build of `target` producing `files`, started at `started`; `uri` says where each
/// artifact lives (by build id and path).
pub struct Fixture<'a> {
    pub target: &'a str,
    pub files: &'a [(&'a str, &'a [u8])],
    pub started: u64,
    /// Any value: builds with different ones have different inputs.
    pub context: &'a str,
}

impl Fixture<'_> {
    /// The build id a publish of this fixture has.
    pub fn id(&self) -> String {
        self.with_build(|b| runner::manifest::build_id(&b.inputs_digest(), self.started))
    }

    pub fn manifest(&self, uri: impl Fn(&str, &str) -> String) -> Manifest {
        let id = self.id();
        let artifacts = self
            .files
            .iter()
            .map(|(path, bytes)| ArtifactRecord {
                path: runner::manifest::RelPath::new(*path).unwrap(),
                size: bytes.len() as u64,
                sha256: runner::manifest::Sha256::of(bytes),
                uri: uri(&id, path),
            })
            .collect();
        self.with_build(|b| Manifest::new(b, &"0".repeat(64), artifacts).unwrap())
    }

    /// Calls `f` with the fixture's build (it borrows values that live only here).
    fn with_build<R>(&self, f: impl FnOnce(&Build) -> R) -> R {
        let origin = Origin::Qemu(ImageRecord {
            distro: "debian".into(),
            suite: "fixture".into(),
            arch: runner::config::Arch::Amd64,
            packages: vec![],
            disk: runner::config::Size(1 << 30),
            init: Default::default(),
            cloud: None,
        });
        let env = BTreeMap::new();
        let build = Build {
            target: self.target,
            builder: "b",
            origin: &origin,
            context_digest: &runner::digest::sha256_hex(self.context.as_bytes()),
            context_tree: &BTreeMap::new(),
            context_excludes: &[],
            script_name: "build.sh",
            script: b"#!/bin/sh\n",
            globs: &[],
            env: &env,
            epoch: 1,
            started_unix: self.started,
            shape: None,
        };
        f(&build)
    }

    /// The manifest and its records, signed with `key` (unsigned without one).
    pub fn records(
        &self,
        uri: impl Fn(&str, &str) -> String,
        key: Option<&SigningKey>,
    ) -> (Manifest, Records) {
        let m = self.manifest(uri);
        let files: Vec<ArtifactFile> = m
            .artifacts
            .iter()
            .map(|a| ArtifactFile {
                path: PathBuf::from(&a.path),
                size: a.size,
                sha256: a.sha256.to_string(),
            })
            .collect();
        let sums = runner::artifacts::sha256sums(&files).into_bytes();
        let records = Records::of(&m, sums, key);
        (m, records)
    }

    /// The build as a local store publishes it: everything in `dir`.
    pub fn write_dir(&self, dir: &Path, key: Option<&SigningKey>) -> Manifest {
        std::fs::create_dir_all(dir).unwrap();
        let uri = |_: &str, p: &str| format!("file://{}", dir.join(p).display());
        let (m, records) = self.records(uri, key);
        for (path, bytes) in self.files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, bytes).unwrap();
        }
        for (name, bytes) in records.named() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        m
    }
}
