//! Build manifests: everything that determined a build and everything it produced, so a
//! build can be skipped when its inputs recur and reproduced later from the manifest alone.
//!
//! Schema version 2 (version 1 is still read: it lacks `context_tree` and `machine`), JSON:
//! `schema`, `runner_version`, `target`, `builder` {`name`, `recipe`, `recipe_digest`},
//! `base_image_sha256`, `context_digest`, `context_excludes`, `script` {`name`, `sha256`, `content`},
//! `artifact_globs`, `env`, `source_date_epoch`, `inputs_digest`, `started_unix`,
//! `finished_unix`, `artifacts` [{`path`, `size`, `sha256`, `uri`}], `context_tree` {path:
//! `sha256:<hex>[ +x]` | `dir` | `-> <target>`}, `machine` {`vcpus`, `memory_mib`} (absent
//! where the backend sized it, EC2).
//! The script travels inside the manifest so that a manifest is enough to rebuild.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::machine::Origin;

pub const SCHEMA: u32 = 2;
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
    pub target: String,
    pub builder: BuilderRecord,
    pub base_image_sha256: String,
    pub context_digest: String,
    /// Exclude patterns applied to the context (e.g. the artifact directory), so that a
    /// reproduction scans the same tree.
    pub context_excludes: Vec<String>,
    pub script: ScriptRecord,
    pub artifact_globs: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub source_date_epoch: u64,
    pub inputs_digest: String,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub artifacts: Vec<ArtifactRecord>,
    /// What each context entry was, so `runner why` can name the paths that changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_tree: BTreeMap<String, String>,
    /// The machine's size where runner chose it; reproductions use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineShape>,
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
    pub name: String,
    pub recipe: Origin,
    pub recipe_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptRecord {
    pub name: String,
    pub sha256: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
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
    pub fn digest(&self) -> String {
        let canonical = serde_json::json!({
            "v": 1,
            "recipe": self.recipe_digest,
            "context": self.context_digest,
            "script": self.script_sha256,
            "env": self.env,
            "epoch": self.epoch,
            "globs": self.globs,
        });
        sha256_hex(canonical.to_string().as_bytes())
    }
}

/// A build's name in a store: the inputs (what it is) and its start (which attempt).
pub fn build_id(inputs_digest: &str, started_unix: u64) -> String {
    format!(
        "{}-{started_unix}",
        &inputs_digest[..16.min(inputs_digest.len())]
    )
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
    pub fn inputs_digest(&self) -> String {
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
    /// an AMI id), and the artifacts it produced.
    pub fn new(build: &Build<'_>, base_image: &str, artifacts: Vec<ArtifactRecord>) -> Manifest {
        let recipe_digest = build.origin.digest();
        let sha256 = sha256_hex(build.script);
        Manifest {
            schema: SCHEMA,
            runner_version: env!("CARGO_PKG_VERSION").to_owned(),
            target: build.target.to_owned(),
            builder: BuilderRecord {
                name: build.builder.to_owned(),
                recipe: build.origin.clone(),
                recipe_digest: recipe_digest.clone(),
            },
            base_image_sha256: base_image.to_owned(),
            context_digest: build.context_digest.to_owned(),
            context_excludes: build.context_excludes.to_vec(),
            inputs_digest: build.inputs_digest(),
            script: ScriptRecord {
                name: build.script_name.to_owned(),
                sha256,
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
        }
    }

    /// Reads a manifest, refusing schema versions this runner does not know before looking
    /// at anything else (a newer schema may mean something else by the same fields).
    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes =
            std::fs::read(path).ctx(|| format!("cannot read manifest `{}`", path.display()))?;
        Manifest::from_slice(&bytes, path)
    }

    /// A manifest from its bytes (as read from a store, or capped from a file); `path` names
    /// where they came from in errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |problem: String| Error::BadFile {
            path: path.to_owned(),
            problem,
        };
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
        serde_json::from_value(value).map_err(|e| bad(format!("invalid manifest: {e}")))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_digest_changes_with_every_input() {
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let globs = vec!["*".to_owned()];
        let base = Inputs {
            recipe_digest: "r",
            context_digest: "c",
            script_sha256: "s",
            env: &env,
            epoch: 1,
            globs: &globs,
        };
        let d = base.digest();
        assert_eq!(d, Inputs { ..base }.digest());
        let env2 = BTreeMap::from([("A".to_owned(), "2".to_owned())]);
        let variants = [
            Inputs {
                recipe_digest: "r2",
                ..Inputs { ..base }
            }
            .digest(),
            Inputs {
                context_digest: "c2",
                ..Inputs { ..base }
            }
            .digest(),
            Inputs {
                script_sha256: "s2",
                ..Inputs { ..base }
            }
            .digest(),
            Inputs {
                env: &env2,
                ..Inputs { ..base }
            }
            .digest(),
            Inputs {
                epoch: 2,
                ..Inputs { ..base }
            }
            .digest(),
        ];
        for v in variants {
            assert_ne!(v, d);
        }
    }

    #[test]
    fn unknown_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        std::fs::write(&p, r#"{"schema": 99, "target": "x"}"#).unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }
}
