//! Cloud images from their distributions: the sha256 a builder names (given, or read from the
//! distribution's checksum file), and the image itself, downloaded once into
//! `<images>/downloads/<sha256>.img`.
//!
//! The download streams to `<sha256>.part` and resumes from its end (an HTTP range request)
//! when the connection breaks, here or in a later run; the file becomes `.img` only once its
//! sha256 is the expected one, and a mismatch removes it. A lock per digest keeps two runs
//! from writing the same file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checksum::{Published, find_digest};
use super::http::{Attempt, Broke, Limits, Trust, get_small, validator_file};
use crate::config::cloud::{Checksum, ImageSource, is_sha256, url_file_name};
use crate::error::{Error, IoContext, Result, joined};
use crate::machine::Report;

/// Checksum files list a few dozen images.
const MAX_CHECKSUM_FILE: usize = 1 << 20;

/// The sha256 the image must have: given, read from the checksum file, or (a local file
/// without one) the file's own. A checksum file with only SHA-512 (Debian's) means the image
/// is downloaded now, into `downloads`, verified against it, and its sha256 remembered.
pub async fn expected_sha256(
    builder: &str,
    source: &ImageSource,
    downloads: &Path,
    report: &Report,
) -> Result<String> {
    match source {
        ImageSource::Url {
            checksum: Checksum::Sha256(s),
            ..
        } => Ok(s.clone()),
        ImageSource::Url {
            url,
            checksum: Checksum::File(sums),
        } => {
            let text = get_small(builder, sums, MAX_CHECKSUM_FILE).await?;
            let name = url_file_name(url);
            match find_digest(&text, name) {
                Some(Published::Sha256(hex)) => Ok(hex),
                Some(Published::Sha512(hex)) => {
                    by_sha512(downloads, builder, url, &hex, report).await
                }
                None => Err(Error::DownloadRefused {
                    builder: builder.to_owned(),
                    url: sums.to_owned(),
                    problem: format!("lists no SHA-256 or SHA-512 for `{name}`"),
                }),
            }
        }
        ImageSource::Path {
            sha256: Some(s), ..
        } => Ok(s.clone()),
        ImageSource::Path { path, sha256: None } => hash(path, Algo::Sha256).await,
    }
}

/// Downloads an image published with SHA-512 only, verifies it, and files it under its
/// sha256 (remembered beside it, so later runs need only the checksum file).
async fn by_sha512(
    downloads: &Path,
    builder: &str,
    url: &str,
    sha512: &str,
    report: &Report,
) -> Result<String> {
    let known = downloads.join(format!("sha512-{sha512}.sha256"));
    let remembered = || {
        let s = std::fs::read_to_string(&known).ok()?.trim().to_owned();
        (is_sha256(&s) && downloads.join(format!("{s}.img")).exists()).then_some(s)
    };
    if let Some(s) = remembered() {
        return Ok(s);
    }
    std::fs::create_dir_all(downloads)
        .ctx(|| format!("cannot create `{}`", downloads.display()))?;
    let _lock = super::lock(&downloads.join(format!("sha512-{sha512}.lock"))).await?;
    if let Some(s) = remembered() {
        return Ok(s);
    }
    let part = downloads.join(format!("sha512-{sha512}.part"));
    let trust = Trust::Unpinned;
    attempts(url, &part, builder, trust, &Limits::DEFAULT, report).await?;
    verify(builder, url, &part, Algo::Sha512, sha512, true).await?;
    let sha256 = hash(&part, Algo::Sha256).await?;
    let done = downloads.join(format!("{sha256}.img"));
    std::fs::rename(&part, &done).ctx(|| format!("cannot keep `{}`", done.display()))?;
    let _ = std::fs::remove_file(validator_file(&part));
    std::fs::write(&known, format!("{sha256}\n"))
        .ctx(|| format!("cannot write `{}`", known.display()))?;
    Ok(sha256)
}

#[derive(Debug, Clone, Copy)]
enum Algo {
    Sha256,
    Sha512,
}

async fn hash(file: &Path, algo: Algo) -> Result<String> {
    let f = file.to_owned();
    let task = tokio::task::spawn_blocking(move || match algo {
        Algo::Sha256 => crate::digest::file_digest::<sha2::Sha256>(&f),
        Algo::Sha512 => crate::digest::file_digest::<sha2::Sha512>(&f),
    });
    joined("hashing the image", task).await
}

/// The image file, verified: a local `path` in place, a URL from the cache or downloaded now.
pub async fn fetch(
    downloads: &Path,
    builder: &str,
    source: &ImageSource,
    sha256: &str,
    report: &Report,
) -> Result<PathBuf> {
    fetch_within(downloads, builder, source, sha256, &Limits::DEFAULT, report).await
}

/// [`fetch`] under other limits (tests shorten the rate window).
pub async fn fetch_within(
    downloads: &Path,
    builder: &str,
    source: &ImageSource,
    sha256: &str,
    limits: &Limits,
    report: &Report,
) -> Result<PathBuf> {
    let (url, trust) = match source {
        ImageSource::Path { path, .. } => {
            let shown = path.display().to_string();
            verify(builder, &shown, path, Algo::Sha256, sha256, false).await?;
            return Ok(path.clone());
        }
        ImageSource::Url {
            url,
            checksum: Checksum::Sha256(_),
        } => (url, Trust::Pinned),
        ImageSource::Url { url, .. } => (url, Trust::Unpinned),
    };
    let done = downloads.join(format!("{sha256}.img"));
    if done.exists() {
        return Ok(done);
    }
    std::fs::create_dir_all(downloads)
        .ctx(|| format!("cannot create `{}`", downloads.display()))?;
    let _lock = super::lock(&downloads.join(format!("{sha256}.lock"))).await?;
    if done.exists() {
        return Ok(done);
    }
    let part = downloads.join(format!("{sha256}.part"));
    attempts(url, &part, builder, trust, limits, report).await?;
    verify(builder, url, &part, Algo::Sha256, sha256, true).await?;
    std::fs::rename(&part, &done).ctx(|| format!("cannot keep `{}`", done.display()))?;
    let _ = std::fs::remove_file(validator_file(&part));
    Ok(done)
}

/// Downloads into `part`, resuming after each broken attempt.
async fn attempts(
    url: &str,
    part: &Path,
    builder: &str,
    trust: Trust,
    limits: &Limits,
    report: &Report,
) -> Result<()> {
    let attempt = Attempt {
        url,
        part,
        builder,
        trust,
        limits,
        report,
    };
    let mut last = None;
    for n in 0..limits.attempts.max(1) {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(1 << n.min(4))).await;
        }
        match attempt.run().await {
            Ok(()) => return Ok(()),
            Err(Broke::Stop(e)) => return Err(e),
            Err(Broke::Retry(e)) => {
                report.line(format!("downloading {builder}: {e}; resuming"));
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Compares the file's digest with `expected`; a mismatch removes the file when `remove`.
async fn verify(
    builder: &str,
    url: &str,
    file: &Path,
    algo: Algo,
    expected: &str,
    remove: bool,
) -> Result<()> {
    let actual = hash(file, algo).await?;
    if actual == expected {
        return Ok(());
    }
    if remove {
        std::fs::remove_file(file).ctx(|| format!("cannot remove `{}`", file.display()))?;
        let _ = std::fs::remove_file(validator_file(file));
    }
    Err(Error::ChecksumMismatch {
        algo: match algo {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        },
        builder: builder.to_owned(),
        url: url.to_owned(),
        expected: expected.to_owned(),
        actual,
    })
}
