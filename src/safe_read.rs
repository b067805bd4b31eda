//! Reading a file someone else may have placed: a manifest handed to `reproduce`, records in
//! a store directory. Never through a symlink (it could point at a host secret, or at
//! `/dev/zero`), never a FIFO or device (a read that never ends), never more than a cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Opens `path` for reading if it is a regular file that is not a symlink; the type is checked
/// on the opened descriptor, so the file cannot be swapped between a check and the open.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::BadFile {
                path: path.to_owned(),
                problem: "is a symbolic link: refusing to follow it".into(),
            },
            _ => Error::Io {
                context: format!("cannot open `{}`", path.display()),
                source: e,
            },
        })?;
    let meta = f
        .metadata()
        .ctx(|| format!("cannot stat `{}`", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(Error::BadFile {
            path: path.to_owned(),
            problem: "is not a regular file".into(),
        });
    }
    Ok(f)
}

/// The whole of a regular file (see [`open_regular`]) of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("cannot read `{}`", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(Error::BadFile {
            path: path.to_owned(),
            problem: format!("larger than {cap} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_capped(&file, 5).unwrap(), b"12345");
        assert!(
            read_capped(&file, 4)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(
            read_capped(&link, 5)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        let fifo = dir.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            read_capped(&fifo, 5)
                .unwrap_err()
                .to_string()
                .contains("not a regular")
        );
        assert!(read_capped(Path::new("/dev/zero"), 5).is_err());
    }
}
