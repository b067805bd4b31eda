//! Reading files below a directory someone else may have written (a published build, a copy of
//! one, a reproduction): each path is one or more normal components, every component is
//! opened with `O_NOFOLLOW` from its parent's descriptor, and the file's type is checked on the
//! opened descriptor, so a symlink (to `/dev/zero`, or out of the directory) or a FIFO or a
//! device is refused rather than followed, and nothing can be swapped in between the check and
//! the read. Reads are capped: a file larger than the caller allows is refused, not buffered.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// What a record (manifest, provenance, checksum file) may weigh: far above any real one, far
/// below what would hurt to hold in memory.
pub const MAX_RECORD: u64 = 32 << 20;

/// An opened regular file and its size as the descriptor reports it.
pub struct Opened {
    pub file: File,
    pub size: u64,
}

/// `dir/rel`, opened for reading; `Ok(None)` if it does not exist. Refuses a `rel` that is
/// not plain relative components, a symlink anywhere below `dir`, and any non-regular file.
pub fn open(dir: &Path, rel: &str) -> Result<Option<Opened>> {
    let path = dir.join(rel);
    let bad = |problem: &str| Error::BadFile {
        path: path.clone(),
        problem: problem.to_owned(),
    };
    let parts: Vec<_> = Path::new(rel).components().collect();
    if parts.is_empty() || !parts.iter().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(
            "not a plain relative path below the directory: refused",
        ));
    }
    let errno = |e: Errno| match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            bad("a symbolic link, or not a directory on the way: refused")
        }
        e => Error::Io {
            context: format!("cannot open `{}`", path.display()),
            source: e.into(),
        },
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // The directory named by the caller is the caller's choice, so it may be reached by a link.
    let mut fd: OwnedFd = match openat(nix::fcntl::AT_FDCWD, dir, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno(e)),
    };
    let (last, parents) = parts.split_last().expect("checked non-empty");
    for c in parents {
        fd = match openat(
            &fd,
            c.as_os_str(),
            dir_flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno(e)),
        };
    }
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let file = match openat(&fd, last.as_os_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno(e)),
    };
    let st = fstat(file.as_fd()).map_err(errno)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(bad("not a regular file: refused"));
    }
    Ok(Some(Opened {
        file: File::from(file),
        size: st.st_size as u64,
    }))
}

/// The whole of `dir/rel` if it is at most `cap` bytes; `Ok(None)` if it does not exist.
pub fn read(dir: &Path, rel: &str, cap: u64) -> Result<Option<Vec<u8>>> {
    let Some(o) = open(dir, rel)? else {
        return Ok(None);
    };
    let path = dir.join(rel);
    let too_big = || Error::BadFile {
        path: path.clone(),
        problem: format!("larger than {cap} bytes: refused"),
    };
    if o.size > cap {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(o.size as usize);
    // One byte past the cap tells a file that grew since fstat from one that did not.
    o.file
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Io {
            context: format!("cannot read `{}`", path.display()),
            source,
        })?;
    if out.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(Some(out))
}

/// The sha256 of `dir/rel`, which must hold exactly `size` bytes (what the manifest records;
/// `None`: what the opened file reports): a longer file is refused after `size + 1` bytes,
/// never read to its end. Blocking; stops within one 1 MiB chunk once `cancel` is cancelled.
pub fn sha256(
    dir: &Path,
    rel: &str,
    size: Option<u64>,
    cancel: &CancellationToken,
) -> Result<String> {
    sha256_into(dir, rel, size, cancel, &mut std::io::sink())
}

/// [`sha256`], copying the bytes to `out` on the way.
pub fn sha256_into(
    dir: &Path,
    rel: &str,
    size: Option<u64>,
    cancel: &CancellationToken,
    out: &mut dyn std::io::Write,
) -> Result<String> {
    let path = dir.join(rel);
    let o = open(dir, rel)?.ok_or_else(|| Error::BadFile {
        path: path.clone(),
        problem: "missing".into(),
    })?;
    let size = size.unwrap_or(o.size);
    let wrong = |got: u64| Error::BadFile {
        path: path.clone(),
        problem: format!("{got} bytes, not the {size} expected: refused"),
    };
    if o.size != size {
        return Err(wrong(o.size));
    }
    let mut f = o.file.take(size + 1);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let n = f.read(&mut buf).map_err(|source| Error::Io {
            context: format!("cannot read `{}`", path.display()),
            source,
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|source| Error::Io {
            context: format!("cannot copy `{}`", path.display()),
            source,
        })?;
    }
    if total != size {
        return Err(wrong(total));
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(d.path().join(name), bytes).unwrap();
        }
        d
    }

    #[test]
    fn regular_files_read_and_hash() {
        let d = dir_with(&[("a", b"abc")]);
        assert_eq!(read(d.path(), "a", 3).unwrap().unwrap(), b"abc");
        let never = CancellationToken::new();
        assert_eq!(
            sha256(d.path(), "a", None, &never).unwrap(),
            crate::digest::sha256_hex(b"abc")
        );
        assert!(read(d.path(), "missing", 3).unwrap().is_none());
    }

    #[test]
    fn links_devices_fifos_and_escapes_are_refused() {
        let d = dir_with(&[("a", b"abc")]);
        let outside = dir_with(&[("secret", b"s")]);
        let p = d.path();
        std::os::unix::fs::symlink("/dev/zero", p.join("zero")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), p.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("sub")).unwrap();
        nix::unistd::mkfifo(&p.join("fifo"), Mode::S_IRWXU).unwrap();
        for rel in [
            "zero",
            "out",
            "sub/secret",
            "fifo",
            "../a",
            "/etc/passwd",
            "",
        ] {
            let e = read(p, rel, 1 << 20).err();
            assert!(
                matches!(e, Some(Error::BadFile { .. })),
                "{rel}: {e:?} (expected a refusal)"
            );
        }
    }

    #[test]
    fn caps_and_recorded_sizes_hold() {
        let d = dir_with(&[("a", b"abcd")]);
        let never = CancellationToken::new();
        assert!(matches!(read(d.path(), "a", 3), Err(Error::BadFile { .. })));
        assert!(matches!(
            sha256(d.path(), "a", Some(3), &never),
            Err(Error::BadFile { .. })
        ));
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            sha256(d.path(), "a", Some(4), &cancelled),
            Err(Error::Cancelled)
        ));
    }
}
