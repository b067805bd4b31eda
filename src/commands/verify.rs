//! `runner verify <artifact dir | s3://bucket/prefix/target[/build id]>`: a published build's
//! provenance signature, every artifact's sha256, and that manifest and provenance agree; or
//! a reproduction's signed verdicts. Exit 0 only if every check holds.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Env, Exit, print_json};
use crate::config::{Project, S3Url};
use crate::digest::{sha256_file, sha256_hex};
use crate::error::{Error, Result};
use crate::progress::Format;
use crate::provenance::dsse::Envelope;
use crate::provenance::keys::PublicKey;
use crate::provenance::{self, Statement};
use crate::store::{ArtifactStore, Stored, local::read_records};

pub struct Args {
    pub what: String,
    pub key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(what: impl Into<String>, r: std::result::Result<String, String>) -> Check {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            what: what.into(),
            ok,
            detail,
        }
    }
}

/// Where the build's files are.
enum Source {
    Dir(PathBuf),
    Store {
        store: std::sync::Arc<dyn ArtifactStore>,
        target: String,
    },
}

pub async fn verify(env: &Env, args: Args) -> Result<i32> {
    let project = Project::load(&env.project).ok();
    let key = super::key::verifying_key(args.key.as_deref(), project.as_ref())?;
    let dir = PathBuf::from(&args.what);
    let checks = if dir.join(provenance::REPRODUCTION_FILE).is_file()
        && !dir.join(crate::manifest::FILE).exists()
    {
        reproduction(&dir, &key)?
    } else {
        let (source, stored) = open(env, project.as_ref(), &args.what).await?;
        build(&source, &stored, &key).await
    };
    let ok = checks.iter().all(|c| c.ok);
    if env.format == Format::Json {
        print_json(serde_json::json!({"what": args.what, "verified": ok, "checks": checks}));
    } else {
        for c in &checks {
            let mark = if c.ok { "ok    " } else { "FAILED" };
            println!("{mark}  {}: {}", c.what, c.detail);
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        match failed {
            0 => println!("verified: every check holds (key {})", key.keyid()),
            n => println!("NOT verified: {n} check(s) failed"),
        }
    }
    Ok(Exit::of(ok))
}

/// The build's records, from a directory or from the store an `s3://` URL names.
async fn open(env: &Env, project: Option<&Project>, what: &str) -> Result<(Source, Stored)> {
    if !what.starts_with("s3://") {
        let dir = PathBuf::from(what);
        let stored = read_records(&dir)?.ok_or_else(|| {
            Error::other(format!(
                "`{what}` holds no manifest.json: not a published build"
            ))
        })?;
        return Ok((Source::Dir(dir), stored));
    }
    let url: S3Url = what.parse().map_err(Error::Other)?;
    let mut parts: Vec<&str> = url.prefix.split('/').filter(|p| !p.is_empty()).collect();
    let build = parts
        .last()
        .filter(|p| is_build_id(p))
        .map(|p| p.to_string());
    if build.is_some() {
        parts.pop();
    }
    let target = parts
        .pop()
        .ok_or_else(|| {
            Error::other(format!(
                "`{what}` names no target: s3://bucket/prefix/target"
            ))
        })?
        .to_owned();
    let base = S3Url {
        bucket: url.bucket.clone(),
        prefix: parts.join("/"),
    };
    let settings = project.map(|p| p.store.clone()).unwrap_or_default();
    let store = crate::store::remote(&base, &settings, &env.dirs).await?;
    let stored = store
        .records(&target, build.as_deref())
        .await?
        .ok_or_else(|| Error::other(format!("no published build at `{what}`")))?;
    Ok((Source::Store { store, target }, stored))
}

/// `<16 hex>-<unix time>`.
fn is_build_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(h, t)| {
        h.len() == 16
            && h.chars().all(|c| c.is_ascii_hexdigit())
            && !t.is_empty()
            && t.chars().all(|c| c.is_ascii_digit())
    })
}

async fn build(source: &Source, stored: &Stored, key: &PublicKey) -> Vec<Check> {
    let mut checks = vec![];
    let statement = match signed_statement(stored.provenance.as_deref(), key) {
        Ok(s) => {
            checks.push(Check::new(
                "signature",
                Ok(format!("by key {}", key.keyid())),
            ));
            s
        }
        Err(e) => {
            checks.push(Check::new("signature", Err(e)));
            return checks;
        }
    };
    let subject = |name: &str| {
        statement
            .subject
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.digest.get("sha256").cloned())
    };
    let docs = [
        (crate::manifest::FILE, Some(&stored.manifest_bytes)),
        (crate::store::SHA256SUMS, stored.sha256sums.as_ref()),
    ];
    for (name, bytes) in docs {
        let got = bytes.map(|b| sha256_hex(b));
        checks.push(Check::new(name, matches_digest(got, subject(name))));
    }
    for a in &stored.manifest.artifacts {
        let got = artifact_sha256(source, stored, a).await;
        let r = match got {
            Err(e) => Err(format!("cannot read it: {e}")),
            Ok(got) => matches_digest(Some(got), subject(&a.path)),
        };
        checks.push(Check::new(format!("artifact {}", a.path), r));
    }
    let disagree = provenance::disagreements(&statement, &stored.manifest);
    checks.push(Check::new(
        "manifest and provenance",
        if disagree.is_empty() {
            Ok("agree on target, inputs and artifacts".into())
        } else {
            Err(disagree.join("; "))
        },
    ));
    checks
}

fn matches_digest(
    got: Option<String>,
    signed: Option<String>,
) -> std::result::Result<String, String> {
    match (got, signed) {
        (None, _) => Err("missing".into()),
        (Some(_), None) => Err("not covered by the provenance".into()),
        (Some(g), Some(s)) if g == s => Ok(format!("sha256 {g}")),
        (Some(g), Some(s)) => Err(format!("sha256 {g}, but the provenance says {s}")),
    }
}

/// The statement inside an envelope, once its signature holds.
fn signed_statement(
    envelope: Option<&[u8]>,
    key: &PublicKey,
) -> std::result::Result<Statement, String> {
    let bytes = envelope.ok_or(format!("no {} published", provenance::FILE))?;
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    let payload = env.verify(key).map_err(|e| e.to_string())?;
    serde_json::from_slice(&payload)
        .map_err(|e| format!("the signed payload is not a statement: {e}"))
}

async fn artifact_sha256(
    source: &Source,
    stored: &Stored,
    a: &crate::manifest::ArtifactRecord,
) -> Result<String> {
    match source {
        Source::Dir(dir) => {
            let path = safe_join(dir, &a.path)?;
            crate::error::joined(
                "hashing an artifact",
                tokio::task::spawn_blocking(move || sha256_file(&path)),
            )
            .await
        }
        Source::Store { store, target } => {
            let tmp = tempfile::NamedTempFile::new().map_err(|source| Error::Io {
                context: "cannot create a temporary file".into(),
                source,
            })?;
            store.fetch(target, &stored.manifest, a, tmp.path()).await
        }
    }
}

/// `dir/rel`, refusing a manifest path that would leave `dir`.
fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::other(format!(
            "unsafe artifact path `{}`",
            rel.display()
        )));
    }
    Ok(dir.join(rel))
}

/// A reproduction's signed statement: its signature, and every verdict identical.
fn reproduction(dir: &Path, key: &PublicKey) -> Result<Vec<Check>> {
    let bytes =
        std::fs::read(dir.join(provenance::REPRODUCTION_FILE)).map_err(|source| Error::Io {
            context: format!("cannot read `{}`", dir.display()),
            source,
        })?;
    let statement = match signed_statement(Some(&bytes), key) {
        Ok(s) => s,
        Err(e) => return Ok(vec![Check::new("signature", Err(e))]),
    };
    let mut checks = vec![Check::new(
        "signature",
        Ok(format!("by key {}", key.keyid())),
    )];
    if statement.predicate_type != provenance::REPRODUCTION {
        checks.push(Check::new(
            "statement",
            Err(format!("not a reproduction: {}", statement.predicate_type)),
        ));
        return Ok(checks);
    }
    for v in statement.predicate["verdicts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let path = v["path"].as_str().unwrap_or_default();
        let verdict = v["result"]["verdict"].as_str().unwrap_or("unknown");
        checks.push(Check::new(
            format!("reproduced {path}"),
            if verdict == "identical" {
                Ok("identical".into())
            } else {
                Err(verdict.to_owned())
            },
        ));
    }
    Ok(checks)
}
