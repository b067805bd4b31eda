//! Which key signs a project's builds and which key its published builds must verify with:
//! one answer for `build`, `reproduce`, `verify` and every store that hands builds out.

use std::path::PathBuf;
use std::sync::Arc;

use super::keys::{PublicKey, SigningKey};
use crate::config::Project;
use crate::error::{Error, Result};

/// `RUNNER_SIGNING_KEY` (a path), else `[signing] key`, else none (builds publish unsigned).
pub fn signing_key(project: Option<&Project>) -> Result<Option<Arc<SigningKey>>> {
    let path = std::env::var_os("RUNNER_SIGNING_KEY")
        .map(PathBuf::from)
        .or_else(|| project?.signing.key.clone());
    path.map(|p| SigningKey::load(&p).map(Arc::new)).transpose()
}

/// The key `runner verify` checks against: `--key`, else [`trusted_key`].
pub fn verifying_key(arg: Option<&str>, project: Option<&Project>) -> Result<PublicKey> {
    if let Some(a) = arg {
        return load_public(a, project);
    }
    trusted_key(project)?.ok_or(Error::NoVerifyingKey)
}

/// The key published builds must verify with before a store hands them out (cache hits,
/// `artifacts`, `why`): `[signing] public_key`, else the public half of the signing key, else
/// none (every build counts).
pub fn trusted_key(project: Option<&Project>) -> Result<Option<PublicKey>> {
    if let Some(a) = project.and_then(|p| p.signing.public_key.as_deref()) {
        return load_public(a, project).map(Some);
    }
    Ok(signing_key(project)?.map(|k| k.public()))
}

/// A public key named relative to the project (a file), or given as itself.
fn load_public(a: &str, project: Option<&Project>) -> Result<PublicKey> {
    let base = project.map(|p| p.root.clone()).unwrap_or_default();
    let path = base.join(a);
    let arg = if path.is_file() {
        path.to_string_lossy().into_owned()
    } else {
        a.to_owned()
    };
    PublicKey::load(&arg)
}
