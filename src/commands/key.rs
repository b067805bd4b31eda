//! `runner key generate`: an ed25519 signing key for provenance, and where builds find it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Env, Exit, print_json};
use crate::config::Project;
use crate::error::{Error, IoContext, Result};
use crate::machine::dir::write_private;
use crate::progress::Format;
use crate::provenance::keys::{PublicKey, SigningKey};

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
    trusted_key(project)?.ok_or_else(|| {
        Error::other(
            "no key to verify with: pass --key (a public key file or 64 hex digits), or set \
             [signing] public_key",
        )
    })
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

/// The trust a store of `project` hands builds out under.
pub fn trust(project: &Project) -> Result<crate::store::Trust> {
    trusted_key(Some(project)).map(crate::store::Trust)
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

/// Writes `out` (the private key, mode 0600) and `out.pub` (its public key, hex).
pub fn generate(env: &Env, out: &Path) -> Result<i32> {
    let key = SigningKey::generate();
    let public = out.with_extension("pub");
    if out.exists() || public.exists() {
        return Err(Error::other(format!(
            "`{}` or `{}` exists: runner never overwrites a key",
            out.display(),
            public.display()
        )));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(|| format!("cannot create `{}`", dir.display()))?;
    }
    write_private(out, key.to_pem().as_bytes())?;
    let pk = key.public();
    std::fs::write(&public, format!("{}\n", pk.hex()))
        .ctx(|| format!("cannot write `{}`", public.display()))?;
    if env.format == Format::Json {
        print_json(serde_json::json!({
            "key": out, "public_key": public, "public_hex": pk.hex(), "keyid": pk.keyid(),
        }));
    } else {
        println!(
            "private key  {} (keep it secret; [signing] key = \"…\")",
            out.display()
        );
        println!("public key   {} ({})", public.display(), pk.hex());
        println!("key id       {}", pk.keyid());
    }
    Ok(Exit::Success.code())
}
