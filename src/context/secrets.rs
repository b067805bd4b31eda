//! Host secrets never enter a guest: a context that holds one (the signing key above all:
//! with it, any build script could sign "official" provenance) is refused before it is
//! packed, with both paths named. Refusing beats leaving the file out quietly: the user
//! learns the key sat in a tree that may also be copied, archived or committed elsewhere.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Context, EntryKind};
use crate::error::{Error, Result};

impl Context {
    /// The entry of this context that is the file `secret` (the same inode: the same path, a
    /// hard link, or a copy's path through a symlinked root), if any. Blocking: one `stat`
    /// per file entry.
    pub fn entry_for(&self, secret: &Path) -> Option<PathBuf> {
        let target = std::fs::metadata(secret).ok()?;
        self.entries()
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .find(|e| {
                std::fs::symlink_metadata(self.root().join(&e.path))
                    .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
            })
            .map(|e| e.path.clone())
    }

    /// Refuses this context if it holds any of `secrets` (what each is, and its path).
    pub fn refuse_secrets(&self, secrets: &[(&'static str, PathBuf)]) -> Result<()> {
        for (what, path) in secrets {
            if let Some(entry) = self.entry_for(path) {
                return Err(Error::SecretInContext {
                    what,
                    secret: path.clone(),
                    context: self.root().to_owned(),
                    entry,
                });
            }
        }
        Ok(())
    }
}

/// The host secrets runner knows of: the signing key (wherever it was loaded from) and the
/// AWS shared credentials and config files.
pub fn host_secrets(signing_key: Option<&Path>) -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![];
    if let Some(k) = signing_key {
        out.push(("the signing key", k.to_owned()));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for (var, default) in [
        ("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        ("AWS_CONFIG_FILE", ".aws/config"),
    ] {
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| Some(home.as_ref()?.join(default)));
        if let Some(p) = path.filter(|p| p.is_file()) {
            out.push(("the AWS credentials", p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ContextOptions;

    fn scan(root: &Path, exclude: &[&str]) -> Context {
        Context::scan(&ContextOptions {
            root: root.to_owned(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_key_inside_the_context_is_refused_by_path_and_by_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let key = dir.path().join("runner-signing.pem");
        std::fs::write(&key, "secret").unwrap();
        std::fs::write(dir.path().join("src/main.c"), "int main;").unwrap();
        let secrets = [("the signing key", key.clone())];
        let e = scan(dir.path(), &[]).refuse_secrets(&secrets).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("runner-signing.pem") && msg.contains("signing key"),
            "{msg}"
        );
        // Excluded: the guest never sees it.
        scan(dir.path(), &["runner-signing.pem"])
            .refuse_secrets(&secrets)
            .unwrap();
        // A hard link under another name is the same secret.
        std::fs::hard_link(&key, dir.path().join("src/innocent.txt")).unwrap();
        let e = scan(dir.path(), &["runner-signing.pem"])
            .refuse_secrets(&secrets)
            .unwrap_err();
        assert!(e.to_string().contains("innocent.txt"), "{e}");
        // A key elsewhere is fine.
        let other = tempfile::tempdir().unwrap();
        scan(other.path(), &[]).refuse_secrets(&secrets).unwrap();
    }
}
