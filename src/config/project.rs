//! `runner.toml`: the project's build targets. Everything a target refers to (builder file,
//! script, context directory) is checked at load time, so a typo fails before any VM boots,
//! with the file, line and key of the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::cache::CacheDecl;
use super::shape::Shape;
use super::value::{self, Example};
use super::{Builder, ConfigError, S3Url, Size, Source};

pub use super::limits::{DEFAULT_CONSOLE, DEFAULT_LOG, Limits};

pub const FILE: &str = "runner.toml";

#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    /// Where the local store puts `<target>/` directories.
    pub artifact_dir: PathBuf,
    pub limits: Limits,
    /// Where to publish when not in the local artifact directory.
    pub store: StoreSettings,
    /// How published builds are signed.
    pub signing: SigningSettings,
    /// Sorted by name.
    pub targets: BTreeMap<String, Target>,
}

/// `[store]`: an S3 (or S3-compatible) destination for every target that does not name its
/// own. Credentials never appear here: they come from the standard AWS chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `s3://bucket/prefix`; unset means the local artifact directory.
    pub upload: Option<S3Url>,
    /// Endpoint of an S3-compatible store (else `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing, which most S3-compatible stores need.
    #[serde(default)]
    pub path_style: bool,
}

/// `[signing]`: the ed25519 key that signs every published build's provenance
/// (`runner key generate` makes one), and the public key `runner verify` checks against.
/// `RUNNER_SIGNING_KEY` (a path) overrides `key`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSettings {
    /// A PKCS#8 PEM private key file, relative to the project.
    pub key: Option<PathBuf>,
    /// For `runner verify`: a file holding the public key, or the key as 64 hex digits.
    pub public_key: Option<String>,
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
    /// The builder's machine size with the target's `vcpus`/`memory` applied (checked as the
    /// builder's own are); `None` where the builder's machines size themselves (EC2).
    pub shape: Option<Shape>,
    /// `s3://bucket/prefix` for this target, overriding `[store] upload`.
    pub upload: Option<S3Url>,
    /// How the context reaches the machine.
    pub transfer: Transfer,
    /// Guest directories kept between builds of the cache's key (`cache`, `cache_key`).
    pub cache: Option<CacheDecl>,
}

/// `context_transfer`: how a target's context pack reaches its machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Attached where the machine can take a disk (local), else fetched by URL when the
    /// target publishes to S3, else streamed over SSH (compressed for remote machines).
    #[default]
    Auto,
    Attach,
    Ssh,
    Fetch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    artifact_dir: Option<Spanned<String>>,
    #[serde(default)]
    limits: super::limits::RawLimits,
    #[serde(default)]
    store: Option<StoreSettings>,
    #[serde(default)]
    signing: SigningSettings,
    #[serde(default)]
    target: BTreeMap<Spanned<String>, RawTarget>,
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
    upload: Option<S3Url>,
    #[serde(default)]
    context_transfer: Transfer,
    cache: Option<Vec<Spanned<String>>>,
    cache_key: Option<Spanned<String>>,
    cache_transfer: Option<Spanned<super::cache::CacheTransfer>>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Project {
    /// Loads `<root>/runner.toml` and resolves every reference in it.
    pub fn load(root: &Path) -> Result<Project, ConfigError> {
        let src = Source::read(&root.join(FILE))?;
        let raw: RawProject = src.parse()?;
        let limits = Limits::from_raw(&src, &raw.limits)?;
        let artifact_dir = root.join(
            raw.artifact_dir
                .as_ref()
                .map_or("artifacts", |s| s.get_ref()),
        );
        let store = raw.store.unwrap_or_default();
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
            signing: SigningSettings {
                key: raw.signing.key.map(|k| expand_home(root, &k)),
                public_key: raw.signing.public_key,
            },
            targets,
        })
    }

    /// Targets matching the patterns (exact names or globs like `hello-*`), or all of them.
    /// A pattern matching nothing is an error naming it.
    pub fn select(&self, patterns: &[String], all: bool) -> Result<Vec<&Target>, TargetError> {
        if all || patterns.is_empty() {
            return Ok(self.targets.values().collect());
        }
        let mut picked: Vec<&Target> = Vec::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|source| TargetError::BadPattern {
                    pattern: p.clone(),
                    source,
                })?
                .compile_matcher();
            let hits: Vec<&Target> = self
                .targets
                .values()
                .filter(|t| glob.is_match(&t.name))
                .collect();
            if hits.is_empty() {
                return Err(TargetError::NoMatch {
                    pattern: p.clone(),
                    known: self.known(),
                });
            }
            for t in hits {
                if !picked.iter().any(|x| x.name == t.name) {
                    picked.push(t);
                }
            }
        }
        Ok(picked)
    }

    /// The target called `name`.
    pub fn target(&self, name: &str) -> Result<&Target, TargetError> {
        self.targets.get(name).ok_or_else(|| TargetError::NoSuch {
            name: name.to_owned(),
            known: self.known(),
        })
    }

    fn known(&self) -> String {
        let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
        known.join(", ")
    }
}

/// A target asked for on the command line that runner.toml does not define.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("bad target pattern `{pattern}`")]
    BadPattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("no target matches `{pattern}` (targets: {known})")]
    NoMatch { pattern: String, known: String },
    #[error("no target `{name}` in runner.toml (targets: {known})")]
    NoSuch { name: String, known: String },
}

fn resolve_target(
    src: &Source,
    root: &Path,
    name: &Spanned<String>,
    t: RawTarget,
) -> Result<Target, ConfigError> {
    let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
    let n = name.get_ref();
    if !super::names::is_component_name(n) {
        return Err(bad(
            name.span(),
            "target",
            format!(
                "target name `{n}` may use only letters, digits, `.`, `_` and `-` (not `.` or \
                 `..`, not starting with `-`, at most 128 characters)"
            ),
        ));
    }
    let builder = load_builder(src, root, n, &t.builder)?;
    let script = find_script(src, root, n, &t.script)?;
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
    let timeout = value::duration(
        src,
        t.timeout.as_ref(),
        "timeout",
        (value::TARGET_TIMEOUT, Example("20m")),
        DEFAULT_TIMEOUT,
    )?;
    // A machine outliving its dead-man switch would power itself off mid-build, and that
    // would look like a reclaim.
    if let Some(life) = builder.max_lifetime()
        && timeout > life
    {
        return Err(bad(
            t.timeout.as_ref().map_or(t.builder.span(), |t| t.span()),
            "timeout",
            format!(
                "target `{n}`: timeout {} is longer than builder `{}`'s max_lifetime {}, after \
                 which its machine powers itself off",
                humantime::format_duration(timeout),
                builder.name,
                humantime::format_duration(life)
            ),
        ));
    }
    let shape = builder.shape_with(src, t.vcpus.as_ref(), t.memory.as_ref())?;
    let own = (
        t.cache.as_deref(),
        t.cache_key.as_ref(),
        t.cache_transfer.as_ref(),
    );
    let cache = super::cache::declared(src, n, own, builder.cache.as_ref())?;
    Ok(Target {
        upload: t.upload,
        name: n.clone(),
        artifacts: artifact_globs(src, &t.artifacts)?,
        env: env_vars(src, t.env)?,
        builder,
        script,
        context,
        timeout,
        shape,
        transfer: t.context_transfer,
        cache,
    })
}

fn load_builder(
    src: &Source,
    root: &Path,
    target: &str,
    name: &Spanned<String>,
) -> Result<Builder, ConfigError> {
    let path = root
        .join("builders")
        .join(format!("{}.toml", name.get_ref()));
    if !path.is_file() {
        return Err(src.error_at(
            Some(name.span()),
            Some("builder".into()),
            format!(
                "target `{target}`: no builder `{}` (looked for `{}`)",
                name.get_ref(),
                path.display()
            ),
        ));
    }
    // A broken builder file reports its own file and line.
    Builder::load(&path)
}

fn find_script(
    src: &Source,
    root: &Path,
    target: &str,
    script: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    [
        root.join(script.get_ref()),
        root.join("provision-scripts").join(script.get_ref()),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        src.error_at(
            Some(script.span()),
            Some("script".into()),
            format!(
                "target `{target}`: script `{}` not found in the project or in provision-scripts/",
                script.get_ref()
            ),
        )
    })
}

fn artifact_globs(src: &Source, raw: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
    let mut artifacts = Vec::new();
    for a in raw {
        let g = a.get_ref();
        let bad = |msg: String| src.error_at(Some(a.span()), Some("artifacts".into()), msg);
        if g.starts_with('/') || g.split('/').any(|c| c == "..") {
            return Err(bad(format!(
                "`{g}` must be relative to the output directory"
            )));
        }
        globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| bad(format!("bad glob `{g}`: {e}")))?;
        artifacts.push(g.clone());
    }
    Ok(artifacts)
}

fn env_vars(
    src: &Source,
    raw: BTreeMap<Spanned<String>, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    for (k, v) in raw {
        let key = k.get_ref();
        if !super::names::is_env_name(key) {
            return Err(src.error_at(
                Some(k.span()),
                Some("env".into()),
                format!(
                    "`{key}` is not a usable variable name (letters, digits, `_`; RUNNER_* and SOURCE_DATE_EPOCH are set by runner)"
                ),
            ));
        }
        env.insert(key.clone(), v);
    }
    Ok(env)
}

/// A path from runner.toml: `~/…` is below the user's home (where a signing key belongs,
/// outside every project), anything else relative to the project root.
fn expand_home(root: &Path, p: &Path) -> PathBuf {
    match (p.strip_prefix("~").ok(), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => root.join(p),
    }
}
