//! `runner why <target>`: what changed since the target's newest published build — the
//! context path by path, env variables, the builder's recipe, the script, the epoch, the
//! artifact globs — or that the inputs are the same (a cache hit). The inputs are computed
//! as `build` computes them ([`crate::run::declared`]), so "cache hit" here is one there.

use std::collections::BTreeMap;

use super::{Env, Exit, print_json};
use crate::config::{Project, S3Url};
use crate::digest::sha256_hex;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::progress::Format;
use crate::run::{Run, RunOptions};

pub async fn why(env: &Env, target: &str, upload: Option<&S3Url>) -> Result<Exit> {
    let project = Project::load(&env.project)?;
    let t = project.target(target)?;
    let host = env.host();
    let store = crate::run::store_of(&host, &project, t, upload).await?;
    let Some(m) = store.latest(target).await? else {
        let line = format!("{target}: no published build yet: it will build");
        return report(env, target, None, &[line]);
    };
    let (run, _events) = Run::new(&host, Some(&project), RunOptions::default())?;
    let now = crate::run::declared(&run, t).await?;
    if now.inputs_digest == m.inputs_digest {
        let line = format!(
            "{target}: cache hit: the inputs are those of build {}",
            crate::manifest::build_id(&m.inputs_digest, m.started_unix)
        );
        return report(env, target, Some(true), &[line]);
    }
    let mut changes = vec![];
    changes.extend(context_changes(&m, &now.context_digest, &now.context_tree));
    changes.extend(env_changes(&m.env, &t.env));
    for c in now.origin.changes_from(&m.builder.recipe) {
        changes.push(format!("builder {}: {c}", t.builder.name));
    }
    if m.script.sha256 != sha256_hex(&now.script) {
        changes.push("script changed".into());
    }
    if now.epoch != m.source_date_epoch {
        changes.push(format!(
            "SOURCE_DATE_EPOCH: {} → {}",
            m.source_date_epoch, now.epoch
        ));
    }
    if t.artifacts != m.artifact_globs {
        changes.push(format!(
            "artifacts: {:?} → {:?}",
            m.artifact_globs, t.artifacts
        ));
    }
    if changes.is_empty() {
        changes.push(
            "the inputs digest differs, but no recorded input does (runner itself changed)".into(),
        );
    }
    report(env, target, Some(false), &changes)
}
fn report(env: &Env, target: &str, hit: Option<bool>, lines: &[String]) -> Result<Exit> {
    if env.format == Format::Json {
        print_json(serde_json::json!({"target": target, "cache_hit": hit, "changes": lines}));
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(Exit::Success)
}

/// `context: src/main.c modified, src/new.c added`, from the recorded tree.
fn context_changes(m: &Manifest, digest: &str, now: &BTreeMap<String, String>) -> Vec<String> {
    if m.context_digest == digest {
        return vec![];
    }
    if m.context_tree.is_empty() {
        return vec![format!(
            "context: changed (sha256 {} → {digest}; the published build records no per-file tree)",
            m.context_digest
        )];
    }
    let was = &m.context_tree;
    let mut parts = vec![];
    for (path, kind) in now {
        match was.get(path) {
            None => parts.push(format!("{path} added")),
            Some(k) if k != kind => parts.push(format!("{path} modified")),
            Some(_) => {}
        }
    }
    parts.extend(
        was.keys()
            .filter(|p| !now.contains_key(*p))
            .map(|p| format!("{p} removed")),
    );
    if parts.is_empty() {
        parts.push("excluded paths changed".into());
    }
    vec![format!("context: {}", parts.join(", "))]
}

/// `env CFLAGS: -O2 → -O3`, `env DEBUG: added`, `env OLD: removed`.
fn env_changes(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = vec![];
    for (k, v) in now {
        match was.get(k) {
            None => out.push(format!("env {k}: added ({v})")),
            Some(w) if w != v => out.push(format!("env {k}: {w} → {v}")),
            Some(_) => {}
        }
    }
    for k in was.keys().filter(|k| !now.contains_key(*k)) {
        out.push(format!("env {k}: removed"));
    }
    out
}
