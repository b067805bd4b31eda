//! What a build is, known before any machine exists: [`declared`] makes it from a target
//! (for `build`, and for `why`, which compares it with a published build: one computation,
//! one inputs digest); the inputs phase adds the pack and the store, and every later phase
//! (and the transfer plan) reads the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Run;
use crate::config::Target;
use crate::context::pack::Pack;
use crate::context::secrets::host_secrets;
use crate::context::{Context, ContextOptions};
use crate::error::{IoContext, Result, joined};
use crate::machine::{Backend, Origin};
use crate::manifest::{Build, Sha256};
use crate::store::ArtifactStore;

/// What a target declares it is built from: context, script, machine source, with the
/// digest a cache hit is decided by.
pub struct Declared {
    pub context: Arc<Context>,
    pub context_digest: String,
    /// Each context path's kind and digest, for `why`'s per-file account.
    pub context_tree: BTreeMap<String, String>,
    pub context_excludes: Vec<String>,
    pub script: Vec<u8>,
    pub script_name: String,
    pub origin: Origin,
    pub backend: Arc<dyn Backend>,
    pub epoch: u64,
    pub inputs_digest: Sha256,
}

/// Scans and hashes the context (in parallel, with rayon) after refusing any host secret in
/// it, reads the script, and asks the backend what its machines come from.
pub async fn declared(run: &Run, t: &Target) -> Result<Declared> {
    let context_excludes = run.excludes.of(&t.context);
    let opts = ContextOptions {
        root: t.context.clone(),
        exclude: context_excludes.clone(),
    };
    let signing = run.signing.clone();
    let (context, digests) = joined(
        "the context scan",
        tokio::task::spawn_blocking(move || {
            let ctx = Context::scan(&opts)?;
            // Before anything is hashed, packed or sent: no host secret enters a guest.
            ctx.refuse_secrets(&host_secrets(signing.as_deref().and_then(|k| k.path())))?;
            let digests = ctx.digests()?;
            Ok((Arc::new(ctx), digests))
        }),
    )
    .await?;
    let script =
        std::fs::read(&t.script).ctx(|| format!("cannot read script `{}`", t.script.display()))?;
    let backend = run.machines.backend(&t.builder);
    let origin = backend.origin().await?;
    let mut d = Declared {
        context,
        context_digest: digests.digest,
        context_tree: digests.tree,
        context_excludes,
        script,
        script_name: t
            .script
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        origin,
        backend,
        epoch: run.epoch,
        inputs_digest: Sha256::of(b""),
    };
    d.inputs_digest = d.build(t, 0).inputs_digest();
    Ok(d)
}

impl Declared {
    /// The build record of `t` started at `started_unix`.
    pub fn build<'a>(&'a self, t: &'a Target, started_unix: u64) -> Build<'a> {
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
            epoch: self.epoch,
            started_unix,
            shape: t.shape,
        }
    }
}

/// What a build is, known before any machine exists: what it declares, its context packed,
/// the store it publishes to, and when it started.
pub struct Inputs {
    pub declared: Declared,
    /// The context packed once (per digest and epoch) for every machine.
    pub pack: Pack,
    pub store: Arc<dyn ArtifactStore>,
    pub started_unix: u64,
}

impl Inputs {
    pub fn build<'a>(&'a self, t: &'a Target) -> Build<'a> {
        self.declared.build(t, self.started_unix)
    }

    pub fn inputs_digest(&self) -> &Sha256 {
        &self.declared.inputs_digest
    }
}
