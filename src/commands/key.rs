//! `runner key generate`: an ed25519 signing key for provenance, and where builds find it.

use std::path::{Path, PathBuf};

use super::{Env, Exit, print_json};
use crate::error::{Error, IoContext, Result};
use crate::machine::dir::write_private;
use crate::progress::Format;
use crate::provenance::keys::SigningKey;

/// Where `runner key generate` writes by default: runner's config directory, outside every
/// project (a key inside one would be part of a build context).
pub fn default_key_path() -> PathBuf {
    dirs::config_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"))
        .join("runner")
        .join("signing.pem")
}

/// Writes `out` (the private key, mode 0600; default [`default_key_path`]) and its `.pub`
/// (the public key, hex). Refuses to write into a build context of the project here, and
/// never overwrites a key.
pub fn generate(env: &Env, out: Option<&Path>) -> Result<Exit> {
    let out = out.map(Path::to_owned).unwrap_or_else(default_key_path);
    let out = out.as_path();
    let key = SigningKey::generate();
    let public = out.with_extension("pub");
    if public == out {
        return Err(Error::BadArgument {
            problem: format!(
                "`{}` ends in .pub, the name of the public half: name the private key file \
                 (e.g. signing.pem)",
                out.display()
            ),
        });
    }
    refuse_context(env, out)?;
    if out.exists() || public.exists() {
        return Err(Error::BadArgument {
            problem: format!(
                "`{}` or `{}` exists: runner never overwrites a key",
                out.display(),
                public.display()
            ),
        });
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
    Ok(Exit::Success)
}

/// Refuses a key path inside a build context of the project in `env` (if there is one), or
/// inside the project itself when a target's context is the whole project.
fn refuse_context(env: &Env, out: &Path) -> Result<()> {
    let Some(project) = super::project_if_any(env)? else {
        return Ok(());
    };
    let abs = |p: &Path| {
        std::path::absolute(p)
            .ctx(|| format!("cannot resolve `{}`", p.display()))
            .map(|a| {
                // The directory may not exist yet: resolve what does (symlinks) and keep the rest.
                let parent = a.parent().and_then(|d| d.canonicalize().ok());
                match (parent, a.file_name()) {
                    (Some(d), Some(n)) => d.join(n),
                    _ => a,
                }
            })
    };
    let out = abs(out)?;
    for t in project.targets.values() {
        let context = t
            .context
            .canonicalize()
            .unwrap_or_else(|_| t.context.clone());
        if out.starts_with(&context) {
            return Err(Error::SecretInContext {
                what: "the signing key to generate",
                secret: out.clone(),
                context: context.clone(),
                entry: out.strip_prefix(&context).unwrap_or(&out).to_owned(),
            });
        }
    }
    Ok(())
}
