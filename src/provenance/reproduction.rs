//! A reproduction's verdicts, and the signed statement `runner reproduce` writes about them
//! ([`super::REPRODUCTION_FILE`]), which `runner verify` checks.

use serde_json::json;

use super::keys::SigningKey;
use super::{REPRODUCTION, STATEMENT_TYPE, Statement, Subject, dsse};
use crate::manifest::{self, Manifest};

/// One artifact's verdict.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Identical,
    Different { recorded: String, rebuilt: String },
    Missing,
    Extra { rebuilt: String },
}

/// Per artifact path, sorted: the recorded build against the rebuild.
pub fn compare(recorded: &Manifest, rebuilt: &Manifest) -> Vec<(String, Verdict)> {
    let mut out = Vec::new();
    for a in &recorded.artifacts {
        let v = match rebuilt.artifacts.iter().find(|b| b.path == a.path) {
            Some(b) if b.sha256 == a.sha256 => Verdict::Identical,
            Some(b) => Verdict::Different {
                recorded: a.sha256.to_string(),
                rebuilt: b.sha256.to_string(),
            },
            None => Verdict::Missing,
        };
        out.push((a.path.to_string(), v));
    }
    for b in &rebuilt.artifacts {
        if !recorded.artifacts.iter().any(|a| a.path == b.path) {
            out.push((
                b.path.to_string(),
                Verdict::Extra {
                    rebuilt: b.sha256.to_string(),
                },
            ));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// The verdicts as an in-toto statement about the recorded artifacts, in a DSSE envelope
/// signed with `key` (unsigned without one): one line, as written to the file.
pub fn signed(
    m: &Manifest,
    rebuilt: &Manifest,
    verdicts: &[(String, Verdict)],
    key: Option<&SigningKey>,
) -> Vec<u8> {
    let statement = Statement {
        type_: STATEMENT_TYPE.into(),
        subject: m
            .artifacts
            .iter()
            .map(|a| Subject::sha256(&a.path, &a.sha256))
            .collect(),
        predicate_type: REPRODUCTION.into(),
        predicate: json!({
            "original": {
                "target": m.target,
                "build": manifest::build_id(&m.inputs_digest, m.started_unix),
                "inputsDigest": m.inputs_digest,
                "builder": m.builder.name,
                "baseImage": m.base_image_sha256,
            },
            "rebuild": {
                "builder": rebuilt.builder.name,
                "baseImage": rebuilt.base_image_sha256,
                "machine": rebuilt.machine,
                "runnerVersion": rebuilt.runner_version,
            },
            "reproduced": verdicts.iter().all(|(_, v)| *v == Verdict::Identical),
            "verdicts": verdicts
                .iter()
                .map(|(path, v)| json!({"path": path, "result": v}))
                .collect::<Vec<_>>(),
        }),
    };
    let payload = serde_json::to_vec(&statement).expect("a statement serializes");
    dsse::Envelope::new(&payload, key).to_line()
}
