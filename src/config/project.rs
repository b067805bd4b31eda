//! `runner.toml`: the project's build targets. Everything a target refers to (builder file,
//! script, context directory) is checked at load time, so a typo fails before any VM boots,
//! with the file, line and key of the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::size::GIB;
use super::{Builder, ConfigError, Size, Source};

pub const FILE: &str = "runner.toml";

#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    /// Where the local store puts `<target>/` directories.
    pub artifact_dir: PathBuf,
    pub limits: Limits,
    /// Where to publish when not in the local artifact directory.
    pub store: StoreSettings,
    /// Sorted by name.
    pub targets: BTreeMap<String, Target>,
}

/// `[store]`: an S3 (or S3-compatible) destination for every target that does not name its
/// own. Credentials never appear here: they come from the standard AWS chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `s3://bucket/prefix`; unset means the local artifact directory.
    pub upload: Option<String>,
    /// Endpoint of an S3-compatible store (else `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing, which most S3-compatible stores need.
    #[serde(default)]
    pub path_style: bool,
}

/// Caps on what a guest may send back; a hostile or runaway build cannot fill the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file: Size,
    pub max_total: Size,
    pub max_files: u64,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub builder: Builder,
    /// Absolute path of the provision script on the host.
    pub script: PathBuf,
    pub context: PathBuf,
    /// Globs relative to the guest's output directory.
    pub artifacts: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub vcpus: Option<u32>,
    pub memory: Option<Size>,
    /// `s3://bucket/prefix` for this target, overriding `[store] upload`.
    pub upload: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    artifact_dir: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    store: Option<Spanned<StoreSettings>>,
    #[serde(default)]
    target: BTreeMap<Spanned<String>, RawTarget>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_file_size: Option<Size>,
    max_total_size: Option<Size>,
    max_files: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    builder: Spanned<String>,
    script: Spanned<String>,
    context: Option<Spanned<String>>,
    #[serde(default)]
    artifacts: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    timeout: Option<Spanned<String>>,
    vcpus: Option<Spanned<u32>>,
    memory: Option<Spanned<Size>>,
    upload: Option<Spanned<String>>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Project {
    /// Loads `<root>/runner.toml` and resolves every reference in it.
    pub fn load(root: &Path) -> Result<Project, ConfigError> {
        let src = Source::read(&root.join(FILE))?;
        let raw: RawProject = src.parse()?;
        let limits = Limits {
            max_file: raw.limits.max_file_size.unwrap_or(Size(4 * GIB)),
            max_total: raw.limits.max_total_size.unwrap_or(Size(16 * GIB)),
            max_files: raw.limits.max_files.unwrap_or(100_000),
        };
        let artifact_dir = root.join(
            raw.artifact_dir
                .as_ref()
                .map_or("artifacts", |s| s.get_ref()),
        );
        let store = match raw.store {
            Some(st) => {
                if let Some(u) = &st.get_ref().upload
                    && let Err(e) = u.parse::<crate::store::s3::S3Url>()
                {
                    return Err(src.error_at(Some(st.span()), Some("upload".into()), e));
                }
                st.into_inner()
            }
            None => StoreSettings::default(),
        };
        let mut targets = BTreeMap::new();
        for (name, t) in raw.target {
            let target = resolve_target(&src, root, &name, t)?;
            targets.insert(target.name.clone(), target);
        }
        Ok(Project {
            root: root.to_owned(),
            artifact_dir,
            limits,
            store,
            targets,
        })
    }

    /// Targets matching the patterns (exact names or globs like `hello-*`), or all of them.
    /// A pattern matching nothing is an error naming it.
    pub fn select(&self, patterns: &[String], all: bool) -> Result<Vec<&Target>, String> {
        if all || patterns.is_empty() {
            return Ok(self.targets.values().collect());
        }
        let mut picked: Vec<&Target> = Vec::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad target pattern `{p}`: {e}"))?
                .compile_matcher();
            let hits: Vec<&Target> = self
                .targets
                .values()
                .filter(|t| glob.is_match(&t.name))
                .collect();
            if hits.is_empty() {
                let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
                return Err(format!(
                    "no target matches `{p}` (targets: {})",
                    known.join(", ")
                ));
            }
            for t in hits {
                if !picked.iter().any(|x| x.name == t.name) {
                    picked.push(t);
                }
            }
        }
        Ok(picked)
    }
}

fn resolve_target(
    src: &Source,
    root: &Path,
    name: &Spanned<String>,
    t: RawTarget,
) -> Result<Target, ConfigError> {
    let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
    let n = name.get_ref();
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(bad(
            name.span(),
            "target",
            format!("target name `{n}` may use only letters, digits, `.`, `_` and `-`"),
        ));
    }
    let builder_path = root
        .join("builders")
        .join(format!("{}.toml", t.builder.get_ref()));
    if !builder_path.is_file() {
        return Err(bad(
            t.builder.span(),
            "builder",
            format!(
                "target `{n}`: no builder `{}` (looked for `{}`)",
                t.builder.get_ref(),
                builder_path.display()
            ),
        ));
    }
    // A broken builder file reports its own file and line.
    let builder = Builder::load(&builder_path)?;

    let script = [
        root.join(t.script.get_ref()),
        root.join("provision-scripts").join(t.script.get_ref()),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        bad(
            t.script.span(),
            "script",
            format!(
                "target `{n}`: script `{}` not found in the project or in provision-scripts/",
                t.script.get_ref()
            ),
        )
    })?;

    let context = match &t.context {
        Some(c) => {
            let p = root.join(c.get_ref());
            if !p.is_dir() {
                return Err(bad(
                    c.span(),
                    "context",
                    format!("target `{n}`: context `{}` is not a directory", c.get_ref()),
                ));
            }
            p
        }
        None => root.to_owned(),
    };

    let mut artifacts = Vec::new();
    for a in &t.artifacts {
        let g = a.get_ref();
        if g.starts_with('/') || g.split('/').any(|c| c == "..") {
            return Err(bad(
                a.span(),
                "artifacts",
                format!("`{g}` must be relative to the output directory"),
            ));
        }
        globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| bad(a.span(), "artifacts", format!("bad glob `{g}`: {e}")))?;
        artifacts.push(g.clone());
    }

    let mut env = BTreeMap::new();
    for (k, v) in t.env {
        let key = k.get_ref();
        let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || key.starts_with("RUNNER_") || key == "SOURCE_DATE_EPOCH" {
            return Err(bad(
                k.span(),
                "env",
                format!(
                    "`{key}` is not a usable variable name (letters, digits, `_`; RUNNER_* and SOURCE_DATE_EPOCH are set by runner)"
                ),
            ));
        }
        env.insert(key.clone(), v);
    }

    let timeout = match &t.timeout {
        Some(s) => {
            let d = humantime::parse_duration(s.get_ref())
                .map_err(|e| bad(s.span(), "timeout", format!("{e} (e.g. \"20m\")")))?;
            if d.is_zero() || d > Duration::from_secs(48 * 3600) {
                return Err(bad(
                    s.span(),
                    "timeout",
                    "must be between 1s and 48h".into(),
                ));
            }
            d
        }
        None => DEFAULT_TIMEOUT,
    };
    let vcpus = match t.vcpus {
        Some(v) if !(1..=64).contains(v.get_ref()) => {
            return Err(bad(v.span(), "vcpus", "must be between 1 and 64".into()));
        }
        v => v.map(Spanned::into_inner),
    };
    let memory = match t.memory {
        Some(m) if m.get_ref().0 < 128 << 20 => {
            return Err(bad(m.span(), "memory", "must be at least 128M".into()));
        }
        m => m.map(Spanned::into_inner),
    };
    if let Some(u) = &t.upload
        && let Err(e) = u.get_ref().parse::<crate::store::s3::S3Url>()
    {
        return Err(bad(u.span(), "upload", e));
    }
    Ok(Target {
        upload: t.upload.map(Spanned::into_inner),
        name: n.clone(),
        builder,
        script,
        context,
        artifacts,
        env,
        timeout,
        vcpus,
        memory,
    })
}
