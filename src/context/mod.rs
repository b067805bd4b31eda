//! The build context: the directory tree runner streams into a guest as a tar.
//!
//! Two properties drive everything here. The set of files must be what the user's ignore
//! files say and nothing from outside the root, so every walker setting is spelled out
//! instead of inherited from defaults meant for searching code. And the result must be
//! reproducible: the same tree gives the same digest and the same tar bytes on any
//! machine, whatever its mtimes, owners, umask or directory order, because the digest is
//! recorded in build manifests and two builds of one tree must be recognisably the same.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// Read in every directory like `.gitignore`: for what should stay in git but out of the VM.
pub const IGNORE_FILE: &str = ".runnerignore";

/// Prefixed to the digest input so a future change of the definition cannot collide with it.
const DIGEST_VERSION: &[u8] = b"runner-context-v1\n";

#[derive(Debug, Clone)]
pub struct ContextOptions {
    pub root: PathBuf,
    /// Globs from the config, matched against the path relative to the root, with `*` never
    /// crossing `/` (`*.log` is top level only; `**/*.log` is any depth). A matching
    /// directory is pruned whole. A trailing `/` is accepted so `target/` does what it says.
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        executable: bool,
    },
    /// Stored byte for byte and never followed: the guest side extracts the link itself,
    /// so where it points is resolved in the guest, as it would be in a checkout.
    Symlink {
        target: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root.
    pub path: PathBuf,
    pub kind: EntryKind,
}

impl Entry {
    /// The tree's value for this entry, given its content hash.
    fn describe(&self, content: &[u8; 32]) -> String {
        match &self.kind {
            EntryKind::Dir => "dir".into(),
            EntryKind::File { executable, .. } => {
                format!(
                    "sha256:{}{}",
                    hex::encode(content),
                    if *executable { " +x" } else { "" }
                )
            }
            EntryKind::Symlink { target } => format!("-> {}", target.to_string_lossy()),
        }
    }

    /// The only two modes in the tar and the digest. Group/other bits follow the umask of
    /// whoever checked the tree out; the execute bit is the part builds depend on.
    pub fn mode(&self) -> u32 {
        let executable = matches!(
            self.kind,
            EntryKind::File {
                executable: true,
                ..
            }
        );
        if executable || self.kind == EntryKind::Dir {
            0o755
        } else {
            0o644
        }
    }
}

/// A FIFO, socket or device: a tar of it would mean nothing in the guest, so it is left
/// out, and reported so the caller can warn rather than let a build fail without a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub kind: &'static str,
}

/// What one scan found. Contents are read later, when hashed or sent, and checked against
/// the size seen here, so a file changed in between fails loudly instead of corrupting the
/// stream or the digest.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    entries: Vec<Entry>,
    skipped: Vec<Skipped>,
}

impl Context {
    pub fn scan(opts: &ContextOptions) -> Result<Context> {
        let root = opts.root.clone();
        let meta = fs::metadata(&root).ctx(|| format!("build context {}", root.display()))?;
        if !meta.is_dir() {
            return Err(Error::Context {
                root,
                problem: "not a directory".into(),
                source: None,
            });
        }
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let excludes = exclude_set(&opts.exclude).map_err(|(problem, source)| Error::Context {
            root: root.clone(),
            problem,
            source: Some(Box::new(source)),
        })?;
        for item in walker(&root, excludes) {
            // Failing beats sending a context silently missing what could not be read.
            let dent = item.map_err(|e| Error::Context {
                root: root.clone(),
                problem: "cannot be read whole".into(),
                source: Some(Box::new(e)),
            })?;
            if dent.depth() == 0 {
                continue;
            }
            let full = dent.path();
            let path = full.strip_prefix(&root).unwrap_or(full).to_path_buf();
            let meta = fs::symlink_metadata(full).ctx(|| format!("reading {}", full.display()))?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File {
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(full).ctx(|| format!("reading {}", full.display()))?;
                EntryKind::Symlink { target }
            } else {
                skipped.push(Skipped {
                    path,
                    kind: special_kind(ft),
                });
                continue;
            };
            entries.push(Entry { path, kind });
        }
        // Walk order depends on the file system; byte order is simple to state and puts
        // every directory before its contents, since a prefix sorts first.
        entries.sort_by(|a, b| path_bytes(&a.path).cmp(path_bytes(&b.path)));
        skipped.sort_by(|a, b| path_bytes(&a.path).cmp(path_bytes(&b.path)));
        Ok(Context {
            root,
            entries,
            skipped,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sorted by path bytes; the order of the tar and of the digest.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The context digest that build manifests record, as lowercase hex. It depends only on
    /// what a build can observe, never on mtimes, owners, umask or walk order, and it is
    /// defined without reference to the tar format, so tar details can change without
    /// changing recorded digests. It is sha256 over `runner-context-v1\n` followed by, for
    /// each entry in [`Context::entries`] order:
    /// kind (`d`, `f` or `l`, one byte), normalized mode (u32 LE), size (u64 LE, 0 unless a
    /// file), sha256 of the contents (32 zero bytes unless a file), then path and symlink
    /// target (empty unless a link), each as u64 LE length and raw bytes.
    /// Files are hashed in parallel; that is most of the cost on a large tree.
    pub fn digest(&self) -> Result<String> {
        Ok(self.digests()?.digest)
    }

    /// [`Context::digest`] and, from the same pass, what each entry is: path → `sha256:<hex>`
    /// (plus ` +x` when executable), `dir`, or `-> <target>`. Manifests record the tree so
    /// `runner why` can name the paths that changed.
    pub fn digests(&self) -> Result<Digests> {
        let contents: Vec<[u8; 32]> = self
            .entries
            .par_iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => hash_file(&self.root, &e.path, size),
                _ => Ok([0; 32]),
            })
            .collect::<Result<_>>()?;
        let mut h = Sha256::new();
        h.update(DIGEST_VERSION);
        let mut tree = BTreeMap::new();
        for (e, content) in self.entries.iter().zip(&contents) {
            tree.insert(e.path.to_string_lossy().into_owned(), e.describe(content));
            let (kind, size, target): (u8, u64, &[u8]) = match &e.kind {
                EntryKind::Dir => (b'd', 0, b""),
                EntryKind::File { size, .. } => (b'f', *size, b""),
                EntryKind::Symlink { target } => (b'l', 0, path_bytes(target)),
            };
            h.update([kind]);
            h.update(e.mode().to_le_bytes());
            h.update(size.to_le_bytes());
            h.update(content);
            for field in [path_bytes(&e.path), target] {
                h.update((field.len() as u64).to_le_bytes());
                h.update(field);
            }
        }
        Ok(Digests {
            digest: hex::encode(h.finalize()),
            tree,
        })
    }
}

/// A context's digest and its tree (see [`Context::digests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub digest: String,
    pub tree: BTreeMap<String, String>,
}

fn walker(root: &Path, exclude: GlobSet) -> ignore::Walk {
    let base = root.to_path_buf();
    let mut builder = WalkBuilder::new(root);
    builder
        // Dotfiles such as `.env.example` are part of builds; ignore files decide.
        .hidden(false)
        // Nothing outside the root, nor the user's own git setup, may change what is in
        // the context: on another machine it would be a different context.
        .parents(false)
        .git_global(false)
        .git_exclude(false)
        // A context that is a plain directory or a subdirectory of a repo still means
        // its .gitignore files.
        .require_git(false)
        .git_ignore(true)
        .ignore(true)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(move |dent| {
            if dent.depth() == 0 {
                return true;
            }
            // Any `.git`, directory or submodule gitfile: repository state is not build
            // input, and a gitfile points outside the context anyway.
            if dent.file_name() == ".git" {
                return false;
            }
            let rel = dent.path().strip_prefix(&base).unwrap_or(dent.path());
            !exclude.is_match(rel)
        });
    builder.build()
}

/// The excludes as one matcher, or which of them is no glob.
fn exclude_set(globs: &[String]) -> Result<GlobSet, (String, globset::Error)> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let pattern = glob.strip_suffix('/').unwrap_or(glob);
        let compiled = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| (format!("exclude {glob:?} is no glob"), e))?;
        set.add(compiled);
    }
    set.build().map_err(|e| ("its excludes".to_owned(), e))
}

fn special_kind(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "unknown file type"
    }
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn hash_file(root: &Path, rel: &Path, size: u64) -> Result<[u8; 32]> {
    let mut contents = open_scanned(root, rel, size)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        // A tree of gigabytes takes minutes: a signal ends it between chunks.
        crate::stopping::check()?;
        let n = contents
            .read(&mut buf)
            .ctx(|| format!("reading {}", root.join(rel).display()))?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Opens a file the scan listed, as exactly the `size` bytes the scan saw. O_NOFOLLOW and
/// O_NONBLOCK keep a path swapped for a symlink or FIFO since the scan from being followed
/// or blocking; the type and size checks then reject it.
fn open_scanned(root: &Path, rel: &Path, size: u64) -> Result<ExactReader> {
    let path = root.join(rel);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .ctx(|| format!("reading {}", path.display()))?;
    if !meta.is_file() || meta.len() != size {
        return Err(Error::Context {
            root: root.to_owned(),
            problem: format!(
                "`{}` changed while the context was being read; run again",
                rel.display()
            ),
            source: None,
        });
    }
    Ok(ExactReader {
        file,
        left: size,
        path,
    })
}

/// Yields exactly the scanned size: a file that grew is cut there, one that shrank is an
/// error, because the tar header already promised that many bytes.
struct ExactReader {
    file: File,
    left: u64,
    path: PathBuf,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub mod pack;
pub mod secrets;
mod stream;

pub use stream::{TarSummary, write_tar};

#[cfg(test)]
mod tests;
