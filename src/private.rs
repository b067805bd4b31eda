//! Files that hold user data (context packs, snapshot states, their scratch) are the user's
//! alone: 0600 files in 0700 directories, whatever the umask. Creating them so, rather than
//! tightening afterwards, leaves no window in which another local user can open them.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Creates `dir` and any missing parents 0700; an existing `dir` is tightened to 0700 (it may
/// come from a runner that made it with the umask).
pub fn dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("cannot create `{}`", dir.display()))?;
    restrict(dir, 0o700)
}

/// A new or truncated file, 0600 from its creation.
pub fn create(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("cannot create `{}`", path.display()))?;
    // An existing file keeps its mode through `open`.
    f.set_permissions(Permissions::from_mode(0o600))
        .ctx(|| format!("cannot restrict `{}`", path.display()))?;
    Ok(f)
}

/// Writes `data` to a 0600 file.
pub fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    create(path)?
        .write_all(data.as_ref())
        .ctx(|| format!("cannot write `{}`", path.display()))
}

/// Sets `path`'s mode (for what another program made, e.g. `mkfs.ext4`'s image).
pub fn restrict(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .ctx(|| format!("cannot restrict `{}` to {mode:o}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_dirs_are_private_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = tmp.path().join("a/b");
        super::dir(&d).unwrap();
        assert_eq!((mode(&d), mode(&tmp.path().join("a"))), (0o700, 0o700));
        let f = d.join("f");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write(&f, "new").unwrap();
        assert_eq!(
            (mode(&f), std::fs::read_to_string(&f).unwrap()),
            (0o600, "new".into())
        );
    }
}
