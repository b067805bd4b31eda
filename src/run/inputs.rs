//! What a build is, known before any machine exists: the value the inputs phase makes and
//! every later phase (and the transfer plan) reads.

use std::sync::Arc;

use crate::config::Target;
use crate::context::Context;
use crate::context::pack::Pack;
use crate::machine::{Backend, Origin};
use crate::manifest::{Build, Sha256};
use crate::store::ArtifactStore;

/// What a build is, known before any machine exists.
pub struct Inputs {
    pub context: Arc<Context>,
    /// The context packed once (per digest and epoch) for every machine.
    pub pack: Pack,
    pub context_digest: String,
    pub context_tree: std::collections::BTreeMap<String, String>,
    pub context_excludes: Vec<String>,
    pub script: Vec<u8>,
    pub script_name: String,
    pub origin: Origin,
    pub backend: Arc<dyn Backend>,
    pub store: Arc<dyn ArtifactStore>,
    pub started_unix: u64,
    pub inputs_digest: Sha256,
}

impl Inputs {
    pub fn build<'a>(&'a self, t: &'a Target, epoch: u64) -> Build<'a> {
        Build {
            target: &t.name,
            builder: &t.builder.name,
            origin: &self.origin,
            context_digest: &self.context_digest,
            context_tree: &self.context_tree,
            context_excludes: &self.context_excludes,
            script_name: &self.script_name,
            script: &self.script,
            globs: &t.artifacts,
            env: &t.env,
            epoch,
            started_unix: self.started_unix,
            shape: t.shape,
        }
    }
}
