//! Build manifests: everything that determined a build and everything it produced, so a
//! build can be skipped when its inputs recur and reproduced later from the manifest alone.
//!
//! Schema version 2 (version 1 is still read: it lacks `context_tree` and `machine`), JSON:
//! `schema`, `runner_version`, `target`, `builder` {`name`, `recipe`, `recipe_digest`},
//! `base_image_sha256`, `context_digest`, `context_excludes`, `script` {`name`, `sha256`, `content`},
//! `artifact_globs`, `env`, `source_date_epoch`, `inputs_digest`, `started_unix`,
//! `finished_unix`, `artifacts` [{`path`, `size`, `sha256`, `uri`}], `context_tree` {path:
//! `sha256:<hex>[ +x]` | `dir` | `-> <target>`}, `machine` {`vcpus`, `memory_mib`} (absent
//! where the backend sized it, EC2), `cache` {`key`, `generation`, `read_sha256`,
//! `saved_sha256`} (absent without a build cache; a byproduct, not an input).
//! The script travels inside the manifest so that a manifest is enough to rebuild.

mod check;
mod fields;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::fields::{BaseImage, FileName, Name, RelPath, Sha256};
pub use crate::config::names::Invalid;
pub use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::machine::Origin;

pub const SCHEMA: u32 = 2;
/// The largest manifest runner reads: the script travels inside, so allow a large one, but
/// never let a hostile file decide how much memory a read takes.
pub const MAX_BYTES: u64 = 32 << 20;
/// Schema versions this runner reads.
const READS: [u64; 2] = [1, 2];
pub const FILE: &str = "manifest.json";
/// The name of the checksum file published beside every target's artifacts (and the
/// manifest): named here, beside the manifest, so that stores and provenance share it.
pub const SHA256SUMS: &str = "SHA256SUMS";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub runner_version: String,
    pub target: Name,
    pub builder: BuilderRecord,
    pub base_image_sha256: BaseImage,
    pub context_digest: Sha256,
    /// Exclude patterns applied to the context (e.g. the artifact directory), so that a
    /// reproduction scans the same tree.
    pub context_excludes: Vec<String>,
    pub script: ScriptRecord,
    pub artifact_globs: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub source_date_epoch: u64,
    pub inputs_digest: Sha256,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub artifacts: Vec<ArtifactRecord>,
    /// What each context entry was, so `runner why` can name the paths that changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_tree: BTreeMap<String, String>,
    /// The machine's size where runner chose it; reproductions use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineShape>,
    /// The build cache the build read and the generation it saved: byproducts, never part
    /// of the inputs digest; a reproduction builds without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheRecord>,
}

/// A build's cache, as its manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRecord {
    /// The cache's key (`runner cache ls`).
    pub key: FileName,
    /// The generation the build read, and its image's digest.
    pub generation: u64,
    pub read_sha256: Sha256,
    /// The image of the generation it saved (committed once the build was published).
    pub saved_sha256: Sha256,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineShape {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl MachineShape {
    pub fn of(s: crate::config::Shape) -> MachineShape {
        MachineShape {
            vcpus: s.vcpus,
            memory_mib: s.memory.mib(),
        }
    }

    pub fn shape(self) -> crate::config::Shape {
        crate::config::Shape {
            vcpus: self.vcpus,
            memory: crate::config::Size(self.memory_mib << 20),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuilderRecord {
    pub name: FileName,
    pub recipe: Origin,
    pub recipe_digest: Sha256,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptRecord {
    pub name: FileName,
    pub sha256: Sha256,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    pub path: RelPath,
    pub size: u64,
    pub sha256: Sha256,
    pub uri: String,
}

/// Everything that decides what a build produces. Two builds with equal inputs digests are
/// interchangeable; the base image's own bytes are left out on purpose: rebaking the same
/// recipe is not bit-identical, and the recipe digest already names what is in it.
pub struct Inputs<'a> {
    pub recipe_digest: &'a str,
    pub context_digest: &'a str,
    pub script_sha256: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub epoch: u64,
    pub globs: &'a [String],
}

impl Inputs<'_> {
    pub fn digest(&self) -> Sha256 {
        let canonical = serde_json::json!({
            "v": 1,
            "recipe": self.recipe_digest,
            "context": self.context_digest,
            "script": self.script_sha256,
            "env": self.env,
            "epoch": self.epoch,
            "globs": self.globs,
        });
        Sha256::of(canonical.to_string().as_bytes())
    }
}

/// A build's name in a store: the inputs (what it is) and its start (which attempt).
pub fn build_id(inputs_digest: &Sha256, started_unix: u64) -> String {
    format!("{}-{started_unix}", inputs_digest.short())
}

/// What a build is, known before any machine exists: everything a manifest records but
/// its artifacts and its end.
pub struct Build<'a> {
    pub target: &'a str,
    pub builder: &'a str,
    pub origin: &'a Origin,
    pub context_digest: &'a str,
    pub context_tree: &'a BTreeMap<String, String>,
    pub context_excludes: &'a [String],
    pub script_name: &'a str,
    pub script: &'a [u8],
    pub globs: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub epoch: u64,
    pub started_unix: u64,
    pub shape: Option<crate::config::Shape>,
}

impl Build<'_> {
    /// The digest that decides cache hits: see [`Inputs`].
    pub fn inputs_digest(&self) -> Sha256 {
        Inputs {
            recipe_digest: &self.origin.digest(),
            context_digest: self.context_digest,
            script_sha256: &sha256_hex(self.script),
            env: self.env,
            epoch: self.epoch,
            globs: self.globs,
        }
        .digest()
    }
}

impl Manifest {
    /// The manifest of a finished build: `build`, the base image its machine booted (a sha256,
    /// an AMI id), and the artifacts it produced. It passes the checks every manifest read
    /// passes, so runner never publishes one that `reproduce` or `verify` would refuse.
    pub fn new(
        build: &Build<'_>,
        base_image: &str,
        artifacts: Vec<ArtifactRecord>,
    ) -> Result<Manifest> {
        let invalid = |field: &'static str| {
            move |source: Invalid| Error::InvalidManifest {
                what: "the manifest of this build".into(),
                field: field.into(),
                source,
            }
        };
        let m = Manifest {
            schema: SCHEMA,
            runner_version: env!("CARGO_PKG_VERSION").to_owned(),
            target: Name::new(build.target).map_err(invalid("target"))?,
            builder: BuilderRecord {
                name: FileName::new(build.builder).map_err(invalid("builder.name"))?,
                recipe: build.origin.clone(),
                recipe_digest: Sha256::new(build.origin.digest())
                    .map_err(invalid("builder.recipe_digest"))?,
            },
            base_image_sha256: BaseImage::new(base_image).map_err(invalid("base_image_sha256"))?,
            context_digest: Sha256::new(build.context_digest).map_err(invalid("context_digest"))?,
            context_excludes: build.context_excludes.to_vec(),
            inputs_digest: build.inputs_digest(),
            script: ScriptRecord {
                name: FileName::new(build.script_name).map_err(invalid("script.name"))?,
                sha256: Sha256::of(build.script),
                content: String::from_utf8_lossy(build.script).into_owned(),
            },
            artifact_globs: build.globs.to_vec(),
            env: build.env.clone(),
            source_date_epoch: build.epoch,
            started_unix: build.started_unix,
            finished_unix: crate::host::now_unix(),
            artifacts,
            context_tree: build.context_tree.clone(),
            machine: build.shape.map(MachineShape::of),
            cache: None,
        };
        check::manifest(&m).map_err(|(field, source)| Error::InvalidManifest {
            what: "the manifest of this build".into(),
            field,
            source,
        })?;
        Ok(m)
    }

    /// Reads a manifest file (a regular file, not followed through a symlink, at most
    /// [`MAX_BYTES`]); see [`Manifest::from_slice`].
    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes = crate::safe_read::read_capped(path, MAX_BYTES)?;
        Manifest::from_slice(&bytes, path)
    }

    /// The one reader of manifests, whoever wrote them: refuses schema versions this runner
    /// does not know before looking at anything else (a newer schema may mean something else
    /// by the same fields), then every field that becomes a path, a file name, a command
    /// argument, a URL or a number is checked (see `check.rs`). `path` names the source in
    /// errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |problem: String| Error::BadFile {
            path: path.to_owned(),
            problem,
        };
        if bytes.len() as u64 > MAX_BYTES {
            return Err(bad(format!(
                "larger than {MAX_BYTES} bytes: not a manifest"
            )));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
        match value.get("schema").and_then(|v| v.as_u64()) {
            Some(v) if READS.contains(&v) => {}
            Some(v) => {
                return Err(bad(format!(
                    "manifest schema version {v}; this runner reads versions 1 and 2"
                )));
            }
            None => return Err(bad("no manifest schema version".into())),
        }
        let m: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            bad(format!(
                "invalid manifest: field `{}`: {}",
                e.path(),
                e.inner()
            ))
        })?;
        check::manifest(&m).map_err(|(field, source)| Error::InvalidManifest {
            what: path.display().to_string(),
            field,
            source,
        })?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests;
