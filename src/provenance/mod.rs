//! Signed provenance: every published build carries an in-toto Statement v1 with an SLSA
//! Provenance v1 predicate, in a DSSE envelope signed with the project's ed25519 key
//! (`provenance.intoto.jsonl`, beside `manifest.json`). Its subjects are the artifacts, the
//! checksum file and the manifest itself, so one signature covers every byte published; its
//! predicate repeats what the manifest says the build was made from, so the two can be
//! checked against each other.

pub mod dsse;
pub mod keyring;
pub mod keys;
pub mod reproduction;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::manifest::Manifest;

pub const FILE: &str = "provenance.intoto.jsonl";
/// What `runner reproduce` writes beside its rebuild.
pub const REPRODUCTION_FILE: &str = "reproduction.intoto.jsonl";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v1";
/// What a runner build is: a provision script run in a fresh machine of a builder, over a
/// context, collecting artifacts (the fields of `externalParameters`).
pub const BUILD_TYPE: &str = "urn:runner:build-type:vm-build:v1";
/// A reproduction's verdicts per artifact.
pub const REPRODUCTION: &str = "urn:runner:predicate:reproduction:v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub fn sha256(name: &str, hex: &str) -> Subject {
        Subject {
            name: name.to_owned(),
            digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Value,
}

/// Why an envelope's bytes yield no statement to trust.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("not a DSSE envelope: {0}")]
    NotEnvelope(#[source] serde_json::Error),
    #[error(transparent)]
    Refused(#[from] dsse::Refused),
    #[error("the signed payload is not a statement: {0}")]
    NotStatement(#[source] serde_json::Error),
}

/// The statement inside the envelope `bytes`, once a signature by `key` holds over it.
pub fn signed_statement(bytes: &[u8], key: &keys::PublicKey) -> Result<Statement, Untrusted> {
    let env: dsse::Envelope = serde_json::from_slice(bytes).map_err(Untrusted::NotEnvelope)?;
    let payload = env.verify(key)?;
    serde_json::from_slice(&payload).map_err(Untrusted::NotStatement)
}

impl Statement {
    /// The sha256 the statement gives the subject `name`.
    pub fn sha256_of(&self, name: &str) -> Option<&str> {
        self.subject
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.digest.get("sha256"))
            .map(String::as_str)
    }
}

/// The published documents a statement covers besides the artifacts.
pub struct Documents<'a> {
    pub sha256sums: &'a [u8],
    pub manifest: &'a [u8],
}

/// RFC 3339 in UTC, as SLSA wants timestamps.
fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// The provenance of the build `m` as a DSSE envelope line, signed with `key` (or unsigned
/// without one): what is published as [`FILE`].
pub fn signed(m: &Manifest, docs: &Documents<'_>, key: Option<&keys::SigningKey>) -> Vec<u8> {
    let builder_id = format!(
        "urn:runner:builder:{}:{}",
        m.builder.recipe.kind(),
        m.builder.name
    );
    let payload =
        serde_json::to_vec(&statement(m, docs, &builder_id)).expect("a statement serializes");
    dsse::Envelope::new(&payload, key).to_line()
}

/// The SLSA provenance of a build, from its manifest: `builder_id` names the machine source
/// (`urn:runner:builder:qemu:bookworm-gcc`).
pub fn statement(m: &Manifest, docs: &Documents<'_>, builder_id: &str) -> Statement {
    let mut subject: Vec<Subject> = m
        .artifacts
        .iter()
        .map(|a| Subject::sha256(&a.path, &a.sha256))
        .collect();
    subject.push(Subject::sha256(
        crate::manifest::SHA256SUMS,
        &crate::digest::sha256_hex(docs.sha256sums),
    ));
    subject.push(Subject::sha256(
        crate::manifest::FILE,
        &crate::digest::sha256_hex(docs.manifest),
    ));
    let build_id = crate::manifest::build_id(&m.inputs_digest, m.started_unix);
    let predicate = json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "target": m.target,
                "script": {"name": m.script.name, "sha256": m.script.sha256},
                "env": m.env,
                "artifacts": m.artifact_globs,
                "sourceDateEpoch": m.source_date_epoch,
                "contextExcludes": m.context_excludes,
            },
            "internalParameters": {
                "inputsDigest": m.inputs_digest,
                "builder": m.builder.name,
                "machine": m.machine,
            },
            "resolvedDependencies": [
                {"name": "base-image", "uri": format!("urn:runner:recipe:{}", m.builder.recipe_digest),
                 "digest": {"sha256": m.base_image_sha256}},
                {"name": "context", "digest": {"sha256": m.context_digest}},
                {"name": "script", "digest": {"sha256": m.script.sha256}},
            ],
        },
        "runDetails": {
            "builder": {"id": builder_id, "version": {"runner": m.runner_version}},
            "metadata": {
                "invocationId": build_id,
                "startedOn": rfc3339(m.started_unix),
                "finishedOn": rfc3339(m.finished_unix),
            },
            "byproducts": byproducts(m),
        },
    });
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject,
        predicate_type: SLSA_PROVENANCE.into(),
        predicate,
    }
}

/// What the build left besides its artifacts: the build cache it read and the generation it
/// saved. Byproducts, so a verifier sees them without taking them for inputs.
fn byproducts(m: &Manifest) -> serde_json::Value {
    let Some(c) = &m.cache else {
        return json!([]);
    };
    json!([
        {"name": format!("cache/{}/read", c.key), "digest": {"sha256": c.read_sha256},
         "annotations": {"generation": c.generation}},
        {"name": format!("cache/{}/saved", c.key), "digest": {"sha256": c.saved_sha256}},
    ])
}

/// Where the statement and the manifest disagree about what the build was made from (the
/// manifest's own bytes are checked by digest; this catches a statement made for another
/// build).
pub fn disagreements(s: &Statement, m: &Manifest) -> Vec<String> {
    let mut out = vec![];
    if s.type_ != STATEMENT_TYPE || s.predicate_type != SLSA_PROVENANCE {
        out.push(format!(
            "not an in-toto SLSA provenance statement ({}, {})",
            s.type_, s.predicate_type
        ));
        return out;
    }
    let def = &s.predicate["buildDefinition"];
    let deps = def["resolvedDependencies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dep = |name: &str| {
        deps.iter()
            .find(|d| d["name"] == name)
            .and_then(|d| d["digest"]["sha256"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let checks = [
        (
            "target",
            def["externalParameters"]["target"]
                .as_str()
                .unwrap_or_default(),
            m.target.as_str(),
        ),
        (
            "base image",
            &dep("base-image"),
            m.base_image_sha256.as_str(),
        ),
        ("context", &dep("context"), m.context_digest.as_str()),
        ("script", &dep("script"), m.script.sha256.as_str()),
        (
            "inputs digest",
            def["internalParameters"]["inputsDigest"]
                .as_str()
                .unwrap_or_default(),
            m.inputs_digest.as_str(),
        ),
    ];
    for (what, said, recorded) in checks {
        if said != recorded {
            out.push(format!(
                "{what}: provenance says `{said}`, the manifest `{recorded}`"
            ));
        }
    }
    for a in &m.artifacts {
        let listed = s
            .subject
            .iter()
            .any(|x| a.path == x.name && x.digest.get("sha256").is_some_and(|d| a.sha256 == *d));
        if !listed {
            out.push(format!(
                "artifact {}: in the manifest, not in the provenance",
                a.path
            ));
        }
    }
    out
}
