//! A reproduction's checks: its signature, every verdict identical, and the rebuilt files
//! where `runner reproduce` leaves them — `artifacts/<target>/` beside the statement — hashing
//! to the digests the statement signs, so a statement moved next to other files fails.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Check, hash_blocking, matches_digest, signature};
use crate::beneath::{self, MAX_RECORD};
use crate::error::{Error, Result};
use crate::provenance::{self, Statement, keys::PublicKey};

pub(super) async fn checks(
    dir: &Path,
    key: &PublicKey,
    cancel: &CancellationToken,
) -> Result<Vec<Check>> {
    let bytes =
        beneath::read(dir, provenance::REPRODUCTION_FILE, MAX_RECORD)?.ok_or_else(|| {
            Error::BadFile {
                path: dir.join(provenance::REPRODUCTION_FILE),
                problem: "missing".into(),
            }
        })?;
    let (statement, signed) = signature(Some(&bytes), provenance::REPRODUCTION_FILE, key);
    let mut checks = vec![signed];
    let Some(statement) = statement else {
        return Ok(checks);
    };
    if statement.predicate_type != provenance::REPRODUCTION {
        checks.push(Check::new(
            "statement",
            Err(format!("not a reproduction: {}", statement.predicate_type)),
        ));
        return Ok(checks);
    }
    checks.extend(verdicts(&statement));
    checks.extend(files(dir, &statement, cancel).await);
    Ok(checks)
}

fn verdicts(statement: &Statement) -> Vec<Check> {
    let list = statement.predicate["verdicts"].as_array();
    let mut out: Vec<Check> = list
        .into_iter()
        .flatten()
        .map(|v| {
            let path = v["path"].as_str().unwrap_or_default();
            let verdict = v["result"]["verdict"].as_str().unwrap_or("unknown");
            Check::new(
                format!("reproduced {path}"),
                if verdict == "identical" {
                    Ok("identical".into())
                } else {
                    Err(verdict.to_owned())
                },
            )
        })
        .collect();
    if out.is_empty() {
        out.push(Check::new(
            "verdicts",
            Err("the statement lists none".into()),
        ));
    }
    out
}

/// Each subject's rebuilt file, hashed from `dir/artifacts/<target>/`.
async fn files(dir: &Path, statement: &Statement, cancel: &CancellationToken) -> Vec<Check> {
    let Some(target) = statement.predicate["original"]["target"].as_str() else {
        return vec![Check::new(
            "statement",
            Err("names no original target".into()),
        )];
    };
    let mut out = vec![];
    for s in &statement.subject {
        let rel = format!("artifacts/{target}/{}", s.name);
        let (dir, cancel) = (dir.to_owned(), cancel.clone());
        // Regular files only (never a link or a device), so their own size bounds the read.
        let got = hash_blocking(move || beneath::sha256(&dir, &rel, None, &cancel)).await;
        let r = match got {
            Ok(g) => matches_digest(Some(g), s.digest.get("sha256").map(String::as_str)),
            Err(e) => Err(e),
        };
        out.push(Check::new(format!("file {}", s.name), r));
    }
    out
}
