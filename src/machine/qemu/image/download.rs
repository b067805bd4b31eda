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

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use tokio::io::AsyncWriteExt;

use super::checksum::{Published, find_digest};
use super::progress::Progress;
use crate::config::cloud::{Checksum, ImageSource, is_sha256, url_file_name};
use crate::error::{Error, IoContext, Result, joined};
use crate::machine::Report;

/// No cloud image is this large; a server that sends more is refused rather than fill the
/// host's disk.
const MAX_IMAGE: u64 = 32 << 30;
/// Checksum files list a few dozen images.
const MAX_CHECKSUM_FILE: usize = 1 << 20;
/// Attempts per download (each resumes where the last one stopped).
const ATTEMPTS: u32 = 5;

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // A stalled transfer is retried (and resumed) instead of waiting for ever.
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::other(format!("cannot make an HTTP client: {e}")))
}

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
            let text = get_small(sums, MAX_CHECKSUM_FILE).await.map_err(|e| {
                Error::other(format!(
                    "builder `{builder}`: cannot read the checksum file: {e}"
                ))
            })?;
            let name = url_file_name(url);
            match find_digest(&text, name) {
                Some(Published::Sha256(hex)) => Ok(hex),
                Some(Published::Sha512(hex)) => {
                    by_sha512(downloads, builder, url, &hex, report).await
                }
                None => Err(Error::other(format!(
                    "builder `{builder}`: the checksum file `{sums}` lists no SHA-256 or SHA-512 \
                     for `{name}`"
                ))),
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
    attempts(url, &part, builder, report).await?;
    verify(builder, url, &part, Algo::Sha512, sha512, true).await?;
    let sha256 = hash(&part, Algo::Sha256).await?;
    let done = downloads.join(format!("{sha256}.img"));
    std::fs::rename(&part, &done).ctx(|| format!("cannot keep `{}`", done.display()))?;
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
    use sha2::Digest;
    let f = file.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let mut input = std::fs::File::open(&f).ctx(|| format!("cannot open `{}`", f.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut a, mut b) = (sha2::Sha256::new(), sha2::Sha512::new());
        loop {
            let n = std::io::Read::read(&mut input, &mut buf)
                .ctx(|| format!("cannot read `{}`", f.display()))?;
            if n == 0 {
                break;
            }
            match algo {
                Algo::Sha256 => a.update(&buf[..n]),
                Algo::Sha512 => b.update(&buf[..n]),
            }
        }
        Ok(match algo {
            Algo::Sha256 => hex::encode(a.finalize()),
            Algo::Sha512 => hex::encode(b.finalize()),
        })
    });
    joined("hashing the image", task).await
}

async fn get_small(url: &str, limit: usize) -> std::result::Result<String, String> {
    let resp = client()
        .map_err(|e| e.to_string())?
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("`{url}`: {e}"))?;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(|e| format!("`{url}`: {e}"))?);
        if body.len() > limit {
            return Err(format!("`{url}` is larger than {limit} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| format!("`{url}` is not text"))
}

/// The image file, verified: a local `path` in place, a URL from the cache or downloaded now.
pub async fn fetch(
    downloads: &Path,
    builder: &str,
    source: &ImageSource,
    sha256: &str,
    report: &Report,
) -> Result<PathBuf> {
    let url = match source {
        ImageSource::Path { path, .. } => {
            let shown = path.display().to_string();
            verify(builder, &shown, path, Algo::Sha256, sha256, false).await?;
            return Ok(path.clone());
        }
        ImageSource::Url { url, .. } => url,
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
    attempts(url, &part, builder, report).await?;
    verify(builder, url, &part, Algo::Sha256, sha256, true).await?;
    std::fs::rename(&part, &done).ctx(|| format!("cannot keep `{}`", done.display()))?;
    Ok(done)
}

/// Downloads into `part`, resuming after each broken attempt.
async fn attempts(url: &str, part: &Path, builder: &str, report: &Report) -> Result<()> {
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
        }
        match download(url, part, builder, report).await {
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

/// Why an attempt ended early: worth another (a broken connection, a server error), or not
/// (the server refuses the file, or it is too large).
enum Broke {
    Retry(Error),
    Stop(Error),
}

impl From<Error> for Broke {
    fn from(e: Error) -> Broke {
        Broke::Retry(e)
    }
}

/// One attempt: appends to `part` from its current length (the server may ignore the range
/// and send everything, which then replaces it).
async fn download(
    url: &str,
    part: &Path,
    builder: &str,
    report: &Report,
) -> std::result::Result<(), Broke> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = client()?.get(url);
    if have > 0 {
        req = req.header(RANGE, format!("bytes={have}-"));
    }
    let broke = |e: reqwest::Error| Error::Download {
        uri: url.to_owned(),
        source: Box::new(e),
    };
    let resp = req.send().await.map_err(broke)?;
    let status = resp.status();
    // The range starts at the end: the file is complete (its digest decides).
    if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        return Ok(());
    }
    if !status.is_success() {
        let e = Error::other(format!("builder `{builder}`: `{url}` answered {status}"));
        return Err(match status.is_client_error() {
            true => Broke::Stop(e),
            false => Broke::Retry(e),
        });
    }
    let resumed = status == StatusCode::PARTIAL_CONTENT && starts_at(&resp, have);
    let offset = if resumed { have } else { 0 };
    let total = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|n| n + offset);
    if total.is_some_and(|t| t > MAX_IMAGE) {
        return Err(Broke::Stop(Error::other(format!(
            "builder `{builder}`: `{url}` is larger than {MAX_IMAGE} bytes"
        ))));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await
        .ctx(|| format!("cannot write `{}`", part.display()))?;
    let bar = Progress::new(report, builder, total, offset);
    let mut written = offset;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(broke)?;
        written += chunk.len() as u64;
        if written > MAX_IMAGE {
            return Err(Broke::Stop(Error::other(format!(
                "builder `{builder}`: `{url}` sent more than {MAX_IMAGE} bytes"
            ))));
        }
        file.write_all(&chunk)
            .await
            .ctx(|| format!("cannot write `{}`", part.display()))?;
        bar.at(written);
    }
    file.flush().await.ctx(|| "cannot flush the download")?;
    bar.done(written);
    Ok(())
}

/// Whether a 206 answer continues at `have` (`Content-Range: bytes <have>-…`).
fn starts_at(resp: &reqwest::Response, have: u64) -> bool {
    resp.headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("bytes ")?
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()
        })
        == Some(have)
}
