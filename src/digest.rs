//! SHA-256 in the two shapes runner needs: of bytes in memory, and of a file streamed from
//! disk (any digest, for downloads published with SHA-512).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// Lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex of a file's contents, read in 1 MiB chunks. Blocking.
pub fn sha256_file(path: &Path) -> Result<String> {
    file_digest::<Sha256>(path)
}

/// Lowercase hex of a file's `D` digest, read in 1 MiB chunks; a signal ends it between
/// chunks (images are gigabytes). Blocking.
pub fn file_digest<D: Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).ctx(|| format!("cannot open `{}`", path.display()))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        crate::stopping::check()?;
        let n = std::io::Read::read(&mut f, &mut buf)
            .ctx(|| format!("cannot read `{}`", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}
