//! Unpacks the artifact tar stream a build guest sends back over SSH.
//!
//! The guest is hostile: every byte of the stream is attacker-controlled. So only regular files
//! and directories are accepted, every name must stay inside the staging directory, every size
//! is capped, and any violation aborts the whole unpack: a partly accepted artifact set would
//! look legitimate downstream, so the caller discards the staging directory instead.
//!
//! Symlinks and hard links are rejected outright rather than checked: build artifacts do not
//! need them, and refusing them removes the whole class of "create a link, then write through
//! it" escapes. Duplicate names are rejected too (a later entry silently replacing an earlier
//! one would let the guest swap a file after it was listed). Permissions are normalised to
//! 0644/0755 and uid, gid and mtime are ignored, so nothing setuid or guest-owned can appear.

use std::cell::Cell;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::error::{Error, IoContext, Result};

/// Caps on what the guest may make us store. Disk is what a hostile guest would exhaust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// Counts directories too: a flood of empty entries costs inodes and time, not bytes.
    pub max_entries: u64,
}

/// The caps `[limits]` sets (or their defaults).
impl From<&crate::config::Limits> for Limits {
    fn from(l: &crate::config::Limits) -> Self {
        Limits {
            max_file_bytes: l.max_file.0,
            max_total_bytes: l.max_total.0,
            max_entries: l.max_files,
        }
    }
}

/// One unpacked file; the digest was computed from the bytes as they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Relative to the staging directory; UTF-8, no control characters, no `.`/`..`.
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Sorted by path; directories are not listed.
    pub files: Vec<ArtifactFile>,
}

/// Allowance per entry for header blocks, the previous entry's padding, and GNU long-name or
/// PAX records. The tar crate reads those records into memory whole, so without this cap one
/// `L` header declaring a terabyte would exhaust RAM before we ever see the entry's name.
const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Unpacks `stream` into `dest`, an existing, empty staging directory the caller discards if
/// this fails. Blocking: run it under `spawn_blocking`. Reading stops at the end-of-archive
/// marker; anything the guest sends after it is left unread, so the caller still has to check
/// the remote tar's exit status and bound the whole transfer with a timeout.
pub fn unpack<R: Read>(stream: R, dest: &Path, limits: &Limits) -> Result<Unpacked> {
    let meta = fs::symlink_metadata(dest)
        .ctx(|| format!("cannot use artifact staging directory `{}`", dest.display()))?;
    if !meta.is_dir() {
        return Err(Error::BadFile {
            path: dest.to_owned(),
            problem: "the artifact staging directory is not a directory".into(),
        });
    }
    let (budget, hit_eof) = (Cell::new(0), Cell::new(false));
    let guarded = Guarded {
        inner: stream,
        budget: &budget,
        hit_eof: &hit_eof,
    };
    let mut archive = tar::Archive::new(guarded);
    let mut entries = archive
        .entries()
        .ctx(|| "cannot read artifact tar stream")?;
    let (mut files, mut count, mut total) = (Vec::new(), 0u64, 0u64);
    let mut last = String::from("the start of the stream");
    loop {
        budget.set(MAX_METADATA_BYTES);
        let Some(entry) = entries.next() else { break };
        // The tar crate's errors quote raw header bytes; escape them like entry names.
        let entry = entry.map_err(|e| io::Error::new(e.kind(), defang(&e.to_string())));
        let mut entry = entry.ctx(|| format!("bad artifact tar stream after {last}"))?;
        let name = shown(&entry.path_bytes());
        count += 1;
        if count > limits.max_entries {
            return reject(&name, format!("more than {} entries", limits.max_entries));
        }
        let rel = relative_path(&entry.path_bytes()).or_else(|why| reject(&name, why))?;
        let declared = entry.size();
        match entry.header().entry_type() {
            EntryType::Directory if declared != 0 => {
                return reject(&name, format!("directory carries {declared} bytes of data"));
            }
            EntryType::Directory => make_dirs(dest, &rel, &name)?,
            EntryType::Regular => {
                total = total.saturating_add(declared);
                check_sizes(declared, total, limits).or_else(|why| reject(&name, why))?;
                // The tar crate already bounds the entry's reader by `declared`; the budget
                // bounds the underlying stream too, so neither alone has to be trusted.
                budget.set(declared);
                files.push(write_file(&mut entry, dest, rel, &name)?);
            }
            other => {
                let target = entry
                    .link_name_bytes()
                    .map(|l| format!(" to {}", shown(&l)));
                let what = format!("{}{}", describe(other), target.unwrap_or_default());
                return reject(
                    &name,
                    format!("{what}; only files and directories are accepted"),
                );
            }
        }
        last = name;
    }
    // The tar crate treats EOF at an entry boundary as a clean end, so a transfer cut short
    // there (guest crash, dropped connection) would otherwise pass as a smaller artifact set.
    if hit_eof.get() {
        return Err(Error::ArtifactRefused(format!(
            "artifact tar stream cut short after {last}: no end-of-archive marker"
        )));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Unpacked { files })
}

/// The `SHA256SUMS` text `sha256sum -c` verifies, sorted by path. Names with a backslash or
/// line break are escaped the way coreutils does, so no name can forge an extra line.
pub fn sha256sums(files: &[ArtifactFile]) -> String {
    let mut sorted: Vec<&ArtifactFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = String::new();
    for f in sorted {
        let name = f.path.to_string_lossy();
        if name.contains(['\\', '\n', '\r']) {
            let escaped = name
                .replace('\\', "\\\\")
                .replace('\n', "\\n")
                .replace('\r', "\\r");
            out.push_str(&format!("\\{}  {escaped}\n", f.sha256));
        } else {
            out.push_str(&format!("{}  {name}\n", f.sha256));
        }
    }
    out
}

/// Validates a guest-supplied name. Non-UTF-8 and control characters are refused because the
/// names end up in `SHA256SUMS`, logs and terminals. An empty result means `dest` itself
/// (`./`, which `tar -C dir .` emits first).
fn relative_path(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    let text = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8")?;
    if text.chars().any(char::is_control) {
        return Err("path contains control characters".into());
    }
    let mut rel = PathBuf::new();
    for component in Path::new(text).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            // `components()` reports `.` only as a leading `./`; interior ones are dropped.
            Component::CurDir => {}
            Component::RootDir => return Err("absolute path".into()),
            Component::ParentDir => return Err("path contains `..`".into()),
            Component::Prefix(_) => return Err("path has a drive prefix".into()),
        }
    }
    Ok(rel)
}

/// Creates `dest/rel` and its parents. Every existing component is checked first: we never
/// create symlinks, so one here means something else wrote into `dest`, and following it
/// could lead outside. Defense in depth, not the primary guard.
fn make_dirs(dest: &Path, rel: &Path, name: &str) -> Result<()> {
    let mut cur = dest.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return reject(name, format!("`{}` is a symlink", cur.display()));
            }
            Ok(_) => return reject(name, format!("`{}` is not a directory", cur.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e).ctx(|| format!("cannot inspect `{}`", cur.display())),
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dest.join(rel))
        .ctx(|| format!("cannot create directory `{}`", dest.join(rel).display()))
}

fn check_sizes(declared: u64, total: u64, limits: &Limits) -> Result<(), String> {
    if declared > limits.max_file_bytes {
        let max = limits.max_file_bytes;
        return Err(format!(
            "declares {declared} bytes, over the per-file limit of {max}"
        ));
    }
    if total > limits.max_total_bytes {
        let max = limits.max_total_bytes;
        return Err(format!("takes the total over the limit of {max} bytes"));
    }
    Ok(())
}

/// Writes the entry's `declared` bytes to a new file, hashing as they pass. `create_new` makes
/// a duplicate entry (or a file replacing a directory) an error rather than an overwrite, and
/// `O_NOFOLLOW` refuses a symlink in the final component even if one somehow existed.
fn write_file<R: Read>(
    entry: &mut tar::Entry<R>,
    dest: &Path,
    rel: PathBuf,
    name: &str,
) -> Result<ArtifactFile> {
    if rel.as_os_str().is_empty() || entry.path_bytes().ends_with(b"/") {
        return reject(name, "a file entry must name a file");
    }
    let mode = entry
        .header()
        .mode()
        .or_else(|_| reject(name, "unreadable mode field"))?;
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    if let Some(parent) = rel.parent() {
        make_dirs(dest, parent, name)?;
    }
    let target = dest.join(&rel);
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&target)
    {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return reject(name, "duplicate entry: the path already exists");
        }
        other => other.ctx(|| format!("cannot create artifact `{}`", target.display()))?,
    };
    let declared = entry.size();
    let mut data = entry.take(declared);
    let (mut hasher, mut written) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).ctx(|| format!("cannot read artifact entry {name}")),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .ctx(|| format!("cannot write artifact `{}`", target.display()))?;
        written += n as u64;
    }
    if written != declared {
        return reject(
            name,
            format!("stream ended after {written} of {declared} bytes"),
        );
    }
    // Explicit chmod: the mode given to open() is subject to the umask.
    file.set_permissions(Permissions::from_mode(mode))
        .ctx(|| format!("cannot set permissions on `{}`", target.display()))?;
    let sha256 = hex::encode(hasher.finalize());
    Ok(ArtifactFile {
        path: rel,
        size: written,
        sha256,
    })
}

fn describe(ty: EntryType) -> String {
    match ty {
        EntryType::Symlink => "a symlink".into(),
        EntryType::Link => "a hard link".into(),
        EntryType::Char => "a character device".into(),
        EntryType::Block => "a block device".into(),
        EntryType::Fifo => "a FIFO".into(),
        other => format!("an entry of type {:?}", other.as_byte() as char),
    }
}

fn reject<T>(name: &str, why: impl std::fmt::Display) -> Result<T> {
    Err(Error::ArtifactRefused(format!(
        "artifact entry {name} rejected: {why}"
    )))
}

/// Quotes a guest-supplied name for messages: escaped so it cannot inject terminal control
/// sequences, truncated so a megabyte-long PAX name stays readable.
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let head: String = text.chars().take(200).collect();
    let more = if head.len() < text.len() { "…" } else { "" };
    format!("\"{}\"{more}", defang(&head))
}

fn defang(text: &str) -> String {
    let escape = |c: char| match c.is_control() {
        true => c.escape_debug().to_string(),
        false => c.to_string(),
    };
    text.chars().map(escape).collect()
}

/// Caps how much the tar parser may read from the stream until `budget` is raised again, and
/// notes whether the stream hit EOF. Shared through `Cell`s because the parser owns the reader.
struct Guarded<'a, R> {
    inner: R,
    budget: &'a Cell<u64>,
    hit_eof: &'a Cell<bool>,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "guest sent over {MAX_METADATA_BYTES} bytes of tar headers for one entry"
            )));
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 && cap > 0 {
            self.hit_eof.set(true);
        }
        self.budget.set(left.saturating_sub(n as u64));
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
