//! The context as a deterministic tar stream: the same tree and mtime give the same bytes on
//! any machine.

use std::io::{self, Write};

use std::path::Path;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::{Context, EntryKind, open_scanned, path_bytes};
use crate::error::{IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarSummary {
    /// Regular files sent, and their content bytes: what a progress line wants.
    pub files: u64,
    pub file_bytes: u64,
    /// Length and lowercase hex sha256 of the exact stream written, to compare with what
    /// the guest received. Not the context digest: see [`Context::digest`].
    pub tar_bytes: u64,
    pub tar_sha256: String,
}

/// Writes the context as a GNU tar whose bytes depend only on the tree and `mtime`
/// (meant to be SOURCE_DATE_EPOCH): entries in [`Context::entries`] order, directories
/// included so empty ones survive, uid/gid 0 with no names, [`Entry::mode`], and `mtime`
/// on every entry. Blocking: run it in `spawn_blocking` and hand it the channel's writer.
/// After an error nothing more is written, not even the end-of-archive marker, so the
/// guest's tar fails on a truncated stream instead of extracting a plausible wrong tree.
pub fn write_tar<W: Write>(ctx: &Context, out: W, mtime: u64) -> Result<TarSummary> {
    let mut tar = tar::Builder::new(HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        bytes: 0,
        abandoned: false,
    });
    let appended = append_entries(&mut tar, ctx, mtime);
    if appended.is_err() {
        // The builder's Drop would otherwise write the end-of-archive marker.
        tar.get_mut().abandoned = true;
    }
    let (files, file_bytes) = appended?;
    let mut sink = tar.into_inner().ctx(|| "finishing the context tar")?;
    sink.inner.flush().ctx(|| "flushing the context tar")?;
    Ok(TarSummary {
        files,
        file_bytes,
        tar_bytes: sink.bytes,
        tar_sha256: hex::encode(sink.hasher.finalize()),
    })
}

fn append_entries<W: Write>(
    tar: &mut tar::Builder<W>,
    ctx: &Context,
    mtime: u64,
) -> Result<(u64, u64)> {
    let (mut files, mut file_bytes) = (0, 0);
    for e in &ctx.entries {
        crate::stopping::check()?;
        let mut header = Header::new_gnu();
        header.set_mode(e.mode());
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(0);
        let appended = match &e.kind {
            EntryKind::Dir => {
                header.set_entry_type(EntryType::Directory);
                let mut name = e.path.clone().into_os_string();
                name.push("/");
                tar.append_data(&mut header, name, io::empty())
            }
            EntryKind::File { size, .. } => {
                header.set_entry_type(EntryType::Regular);
                header.set_size(*size);
                files += 1;
                file_bytes += size;
                let contents = open_scanned(&ctx.root, &e.path, *size)?;
                tar.append_data(&mut header, &e.path, contents)
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                append_symlink(tar, &mut header, &e.path, target)
            }
        };
        if appended.is_err() {
            crate::stopping::check()?;
        }
        appended.ctx(|| format!("adding {} to the context tar", e.path.display()))?;
    }
    Ok((files, file_bytes))
}

/// `Header::set_link_name` rewrites the target through `Path::components` (dropping `.`
/// and doubled slashes), which could change what the link means, so a target that fits
/// goes in verbatim; a longer one becomes a GNU long-link record, which keeps raw bytes.
fn append_symlink<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut Header,
    path: &Path,
    target: &Path,
) -> io::Result<()> {
    if path_bytes(target).len() <= header.as_old().linkname.len() {
        header.set_link_name_literal(path_bytes(target))?;
        tar.append_data(header, path, io::empty())
    } else {
        tar.append_link(header, path, target)
    }
}

/// Hashes and counts exactly what reached the caller's writer.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    abandoned: bool,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.abandoned {
            return Err(io::Error::other("context tar abandoned after an error"));
        }
        // A large file is one entry: a signal ends it between writes (see `append_entries`).
        if crate::stopping::asked() {
            return Err(io::Error::other("stopped by a signal"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
