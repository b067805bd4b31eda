//! The checks every manifest passes, read or written, beyond what its field types already
//! hold: the recipe passes the builder-file checks (`Origin::check`, in `machine/`, which owns
//! what a recipe is), the machine's shape the range checks, artifact URIs name the build's
//! own place, and nothing is large enough to cost runner memory or time it did not plan for.
//! A failure names the field, JSON-path style: `builder.recipe.packages[2]`.

use super::fields::{RelPath, Sha256};
use super::{Manifest, build_id};
use crate::config::names::{self, Failed, ensure};
use crate::config::shape::{MEMORY, VCPUS};

/// Beyond these a manifest is not one runner wrote.
const MAX_LIST: usize = 100_000;
const MAX_TREE: usize = 10_000_000;
const MAX_STRING: usize = 64 << 10;
/// 9999-12-31: later times do not fit a calendar date (and overflow `SystemTime` sums).
const MAX_TIME: u64 = 253_402_300_799;

pub fn manifest(m: &Manifest) -> Result<(), Failed> {
    ensure(
        (1..=64).contains(&m.runner_version.len())
            && m.runner_version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c)),
        || "runner_version".into(),
        &m.runner_version,
        "a version",
    )?;
    m.builder.recipe.check()?;
    strings("context_excludes", &m.context_excludes)?;
    strings("artifact_globs", &m.artifact_globs)?;
    env(m)?;
    for (field, t) in [
        ("source_date_epoch", m.source_date_epoch),
        ("started_unix", m.started_unix),
        ("finished_unix", m.finished_unix),
    ] {
        ensure(
            t <= MAX_TIME,
            || field.into(),
            &t.to_string(),
            "a time before the year 10000",
        )?;
    }
    artifacts(m)?;
    tree(m)?;
    if let Some(s) = m.machine {
        ensure(
            (VCPUS.min..=VCPUS.max).contains(&s.vcpus),
            || "machine.vcpus".into(),
            &s.vcpus.to_string(),
            "a vCPU count within the builder limits (1 to 64)",
        )?;
        let mib = |size: crate::config::Size| size.0 >> 20;
        ensure(
            (mib(MEMORY.min)..=mib(MEMORY.max)).contains(&s.memory_mib),
            || "machine.memory_mib".into(),
            &s.memory_mib.to_string(),
            "a memory size within the builder limits (128 MiB to 256 GiB)",
        )?;
    }
    Ok(())
}

/// Patterns (globs, excludes): bounded in number and length (the host compiles the
/// excludes into one matcher), no NUL.
fn strings(field: &str, list: &[String]) -> Result<(), Failed> {
    ensure(
        list.len() <= 1024,
        || field.into(),
        "…",
        "a list of at most 1024 patterns",
    )?;
    for (i, s) in list.iter().enumerate() {
        ensure(
            (1..=1024).contains(&s.len()) && !s.contains('\0'),
            || format!("{field}[{i}]"),
            s,
            "a pattern of 1 to 1024 bytes",
        )?;
    }
    Ok(())
}

fn env(m: &Manifest) -> Result<(), Failed> {
    ensure(
        m.env.len() <= 4096,
        || "env".into(),
        "…",
        "at most 4096 variables",
    )?;
    for (k, v) in &m.env {
        ensure(
            names::is_env_name(k),
            || "env".into(),
            k,
            "a variable name a target may set",
        )?;
        ensure(
            v.len() <= MAX_STRING && !v.contains('\0'),
            || format!("env.{k}"),
            v,
            "a value of at most 64 KiB without NUL",
        )?;
    }
    Ok(())
}

/// Every artifact once, and its URI the one the store would have given it: `file://…/<target>/<path>`
/// (a local store) or `s3://<bucket>/…/<target>/<build id>/<path>`. A URI naming any other
/// place (`file:///etc/shadow`, another build's object) is refused, since `artifacts get`,
/// `verify` and `reproduce` read what it names.
fn artifacts(m: &Manifest) -> Result<(), Failed> {
    ensure(
        m.artifacts.len() <= MAX_LIST,
        || "artifacts".into(),
        "…",
        "at most 100000 artifacts",
    )?;
    let mut seen = std::collections::BTreeSet::new();
    let id = build_id(&m.inputs_digest, m.started_unix);
    for (i, a) in m.artifacts.iter().enumerate() {
        let field = |name: &str| format!("artifacts[{i}].{name}");
        ensure(
            seen.insert(a.path.as_str()),
            || field("path"),
            &a.path,
            "a path listed once",
        )?;
        let local = a.uri.strip_prefix("file:///").is_some()
            && a.uri.ends_with(&format!("/{}/{}", m.target, a.path));
        let s3 = a
            .uri
            .strip_prefix("s3://")
            .is_some_and(|rest| rest.contains('/'))
            && a.uri.ends_with(&format!("/{}/{id}/{}", m.target, a.path));
        ensure(
            a.uri.len() <= 8192
                && (local || s3)
                && !a.uri.contains(|c: char| c.is_control())
                && !a.uri.split('/').any(|c| c == ".." || c == "."),
            || field("uri"),
            &a.uri,
            "the build's own location (…/<target>/[<build id>/]<path>)",
        )?;
    }
    Ok(())
}

/// `context_tree`: path → `sha256:<hex>[ +x]` | `dir` | `-> <link target>`.
fn tree(m: &Manifest) -> Result<(), Failed> {
    ensure(
        m.context_tree.len() <= MAX_TREE,
        || "context_tree".into(),
        "…",
        "at most 10000000 entries",
    )?;
    for (path, kind) in &m.context_tree {
        RelPath::new(path.as_str()).map_err(|e| ("context_tree".to_owned(), e))?;
        let file = kind
            .strip_prefix("sha256:")
            .map(|h| h.strip_suffix(" +x").unwrap_or(h))
            .is_some_and(|h| Sha256::new(h).is_ok());
        let link = kind
            .strip_prefix("-> ")
            .is_some_and(|t| t.len() <= 4096 && !t.contains('\0'));
        ensure(
            kind == "dir" || file || link,
            || format!("context_tree.{path}"),
            kind,
            "`dir`, `sha256:<hex>[ +x]` or `-> <target>`",
        )?;
    }
    Ok(())
}
