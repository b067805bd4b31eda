//! `runner verify <artifact dir | s3://bucket/prefix/target[/build id]>`: a published build's
//! provenance signature, every artifact's sha256, and that manifest and provenance agree; or
//! a reproduction's signed verdicts and the rebuilt files beside it. Exit 0 only if every
//! check holds.
//!
//! Everything read is hostile until checked: each record is read once, capped, and what is
//! hashed is what is parsed; files are opened without following links and must be regular;
//! an artifact is read only up to the size its manifest records. The first Ctrl-C or SIGTERM
//! stops the hashing.

mod build;
mod reproduction;

use std::path::PathBuf;

use serde::Serialize;

use super::{Env, Exit, print_json};
use crate::beneath;
use crate::config::{Project, S3Url};
use crate::error::{Error, Result};
use crate::progress::Format;
use crate::provenance::keys::PublicKey;
use crate::provenance::{self, Statement};
use crate::store::{ArtifactStore, Stored, Trust, local::read_records};

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

pub async fn verify(env: &Env, args: Args) -> Result<Exit> {
    // A broken runner.toml is an error, not "no key configured".
    let project = super::project_if_any(env)?;
    let key = crate::provenance::keyring::verifying_key(args.key.as_deref(), project.as_ref())?;
    let cancel = env.shutdown.token.clone();
    let checks = env
        .cancellable(async {
            if let Some(dir) = reproduction_dir(&args.what)? {
                return reproduction::checks(&dir, &key, &cancel).await;
            }
            let (source, stored) = open(env, project.as_ref(), &args.what).await?;
            Ok(build::checks(&source, &stored, &key, &cancel).await)
        })
        .await?;
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

/// `what` as a reproduction's directory: it holds a reproduction statement and no manifest.
fn reproduction_dir(what: &str) -> Result<Option<PathBuf>> {
    if what.starts_with("s3://") {
        return Ok(None);
    }
    let dir = PathBuf::from(what);
    let statement = beneath::open(&dir, provenance::REPRODUCTION_FILE)?;
    let manifest = beneath::open(&dir, crate::manifest::FILE)?;
    Ok((statement.is_some() && manifest.is_none()).then_some(dir))
}

/// The build's records, from a directory or from the store an `s3://` URL names.
async fn open(env: &Env, project: Option<&Project>, what: &str) -> Result<(Source, Stored)> {
    if !what.starts_with("s3://") {
        let dir = PathBuf::from(what);
        let stored = read_records(&dir)?.ok_or_else(|| Error::BadArgument {
            problem: format!("`{what}` holds no manifest.json: not a published build"),
        })?;
        return Ok((Source::Dir(dir), stored));
    }
    let url: S3Url = what
        .parse()
        .map_err(|problem| Error::BadArgument { problem })?;
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
        .ok_or_else(|| Error::BadArgument {
            problem: format!("`{what}` names no target: s3://bucket/prefix/target"),
        })?
        .to_owned();
    let base = S3Url {
        bucket: url.bucket.clone(),
        prefix: parts.join("/"),
    };
    let settings = project.map(|p| p.store.clone()).unwrap_or_default();
    // No trust filter: verify reports on the newest build whatever it is, check by check.
    let store = crate::store::remote(&base, &settings, &env.dirs, Trust::default()).await?;
    let stored = store
        .records(&target, build.as_deref())
        .await?
        .ok_or_else(|| Error::NoPublishedBuild {
            target: what.to_owned(),
        })?;
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

fn matches_digest(
    got: Option<String>,
    signed: Option<&str>,
) -> std::result::Result<String, String> {
    match (got, signed) {
        (None, _) => Err("missing".into()),
        (Some(_), None) => Err("not covered by the statement".into()),
        (Some(g), Some(s)) if g == s => Ok(format!("sha256 {g}")),
        (Some(g), Some(s)) => Err(format!("sha256 {g}, but the statement says {s}")),
    }
}

/// The statement inside an envelope, once its signature holds, and the check saying so.
fn signature(envelope: Option<&[u8]>, file: &str, key: &PublicKey) -> (Option<Statement>, Check) {
    let r = match envelope {
        None => Err(format!("no {file}")),
        Some(b) => provenance::signed_statement(b, key).map_err(|e| e.to_string()),
    };
    match r {
        Ok(s) => (
            Some(s),
            Check::new("signature", Ok(format!("by key {}", key.keyid()))),
        ),
        Err(e) => (None, Check::new("signature", Err(e))),
    }
}

/// Runs a blocking hash; a panic inside is reported like an unreadable file.
async fn hash_blocking(
    f: impl FnOnce() -> Result<String> + Send + 'static,
) -> std::result::Result<String, String> {
    crate::error::joined("hashing a file", tokio::task::spawn_blocking(f))
        .await
        .map_err(|e| match e {
            Error::Cancelled => "cancelled".to_owned(),
            e => format!("cannot read it: {e}"),
        })
}
