//! One attempt at a download, with a hostile server in mind: redirects may not leave https
//! (nor, for an image no digest pins, leave https or this host's loopback); a server that
//! trickles is cut off by a minimum rate; a resume asks `If-Range` with the validator the
//! server gave when the partial file began, and a 206 that does not continue exactly at the
//! partial file's end restarts the download from zero instead of being written at the wrong
//! offset. The caller verifies the digest of whatever arrives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED};
use reqwest::header::{HeaderValue, RANGE};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::progress::Progress;
use crate::config::cloud::transport_is_private;
use crate::error::{Error, IoContext, Result};
use crate::machine::Report;

/// How much a download may take. [`Limits::DEFAULT`] is what builds use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attempts per download, each resuming where the last stopped.
    pub attempts: u32,
    /// The minimum rate: an attempt that receives fewer than `floor` bytes in any `window`
    /// is abandoned (and the next one resumes), so a trickling server cannot hold a build.
    pub window: Duration,
    pub floor: u64,
    /// No cloud image is this large; a server that sends more is refused rather than fill
    /// the host's disk.
    pub max_bytes: u64,
}

impl Limits {
    /// 512 KiB per 30 s (about 17 KiB/s) is far below any mirror that works at all; five
    /// attempts of a trickler end within about three minutes.
    pub const DEFAULT: Limits = Limits {
        attempts: 5,
        window: Duration::from_secs(30),
        floor: 512 << 10,
        max_bytes: 32 << 30,
    };
}

/// Whether the image a URL serves is pinned by a digest in the builder file: only then may
/// it travel over plain http (the digest, not the transport, vouches for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Pinned,
    Unpinned,
}

/// Why a redirect is refused, or `None` to follow it.
fn refuse_redirect(from: &reqwest::Url, to: &reqwest::Url, trust: Trust) -> Option<String> {
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some(format!(
            "refusing a redirect from https to `{to}` (a downgrade)"
        ));
    }
    let allowed = match trust {
        Trust::Pinned => matches!(to.scheme(), "http" | "https"),
        Trust::Unpinned => transport_is_private(to.as_str()),
    };
    (!allowed).then(|| {
        format!("refusing a redirect to `{to}`: only https (or loopback) serves an unpinned image")
    })
}

pub(super) fn client(trust: Trust) -> Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let from = attempt.previous().last().cloned();
        match from.and_then(|from| refuse_redirect(&from, attempt.url(), trust)) {
            Some(why) => attempt.error(why),
            None if attempt.previous().len() >= 10 => attempt.error("too many redirects"),
            None => attempt.follow(),
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(policy)
        .build()
        .map_err(|e| Error::Download {
            uri: "(no client)".into(),
            source: Box::new(e),
        })
}

/// Why an attempt ended early: worth another (a broken connection, a server error, a
/// trickle), or not (the server refuses the file, a redirect is refused, it is too large).
pub(super) enum Broke {
    Retry(Error),
    Stop(Error),
}

impl From<Error> for Broke {
    fn from(e: Error) -> Broke {
        Broke::Retry(e)
    }
}

/// One download into `part`.
pub(super) struct Attempt<'a> {
    pub url: &'a str,
    pub part: &'a Path,
    pub builder: &'a str,
    pub trust: Trust,
    pub limits: &'a Limits,
    pub report: &'a Report,
}

/// Beside `X.part`: the server's validator (a strong ETag, else Last-Modified) from the
/// answer that began it, sent as `If-Range` so a changed file is sent whole, not spliced.
pub(super) fn validator_file(part: &Path) -> PathBuf {
    part.with_extension("validator")
}

impl Attempt<'_> {
    fn refused(&self, problem: impl Into<String>) -> Error {
        Error::DownloadRefused {
            builder: self.builder.to_owned(),
            url: self.url.to_owned(),
            problem: problem.into(),
        }
    }

    /// Appends to `part` from its current length, or starts it anew when the server sends
    /// the whole file.
    pub async fn run(&self) -> std::result::Result<(), Broke> {
        let have = std::fs::metadata(self.part).map(|m| m.len()).unwrap_or(0);
        let mut req = client(self.trust)?.get(self.url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
            if let Ok(v) = std::fs::read_to_string(validator_file(self.part))
                && let Ok(v) = HeaderValue::from_str(v.trim())
            {
                req = req.header(IF_RANGE, v);
            }
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        // The range starts at the end: the file is complete (its digest decides).
        if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            return Ok(());
        }
        if !status.is_success() {
            let e = self.refused(format!("answered {status}"));
            return Err(match status.is_client_error() {
                true => Broke::Stop(e),
                false => Broke::Retry(e),
            });
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT;
        if resumed && range_start(resp.headers()) != Some(have) {
            // Written at its own offset it would corrupt the file; written at ours it would
            // splice. Start again from nothing.
            self.discard()?;
            return Err(Broke::Retry(self.refused(format!(
                "answered a range that does not start at byte {have}; starting again"
            ))));
        }
        let offset = if resumed { have } else { 0 };
        if !resumed {
            self.remember_validator(resp.headers())?;
        }
        self.stream(resp, offset).await
    }

    /// A refused redirect is final (our policy refused it, and would again); anything
    /// else the transport reports is worth another attempt.
    fn transport(&self, e: reqwest::Error) -> Broke {
        if e.is_redirect() {
            let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            return Broke::Stop(self.refused(why));
        }
        Broke::Retry(Error::Download {
            uri: self.url.to_owned(),
            source: Box::new(e),
        })
    }

    fn discard(&self) -> Result<()> {
        for f in [self.part.to_owned(), validator_file(self.part)] {
            match std::fs::remove_file(&f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).ctx(|| format!("cannot remove `{}`", f.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn remember_validator(&self, headers: &HeaderMap) -> Result<()> {
        let strong_etag = headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.starts_with("W/"));
        let file = validator_file(self.part);
        match strong_etag.or_else(|| headers.get(LAST_MODIFIED)?.to_str().ok()) {
            Some(v) => std::fs::write(&file, v),
            None => std::fs::remove_file(&file).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        }
        .ctx(|| format!("cannot write `{}`", file.display()))
    }

    /// Writes the body from `offset`, holding it to the size cap and the minimum rate.
    async fn stream(&self, resp: reqwest::Response, offset: u64) -> std::result::Result<(), Broke> {
        let max = self.limits.max_bytes;
        let total = content_length(resp.headers()).map(|n| n + offset);
        if total.is_some_and(|t| t > max) {
            return Err(Broke::Stop(
                self.refused(format!("is larger than {max} bytes")),
            ));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .open(self.part)
            .await
            .ctx(|| format!("cannot write `{}`", self.part.display()))?;
        let bar = Progress::new(self.report, self.builder, total, offset);
        let mut floor = RateFloor::new(self.limits);
        let mut written = offset;
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout_at(floor.window_end(), body.next()).await;
            let chunk = match next {
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| self.transport(e))?,
                Err(_elapsed) => Default::default(),
            };
            written += chunk.len() as u64;
            if written > max {
                return Err(Broke::Stop(
                    self.refused(format!("sent more than {max} bytes")),
                ));
            }
            file.write_all(&chunk)
                .await
                .ctx(|| format!("cannot write `{}`", self.part.display()))?;
            if !floor.received(chunk.len() as u64) {
                file.flush().await.ctx(|| "cannot flush the download")?;
                return Err(Broke::Retry(self.refused(floor.describe())));
            }
            bar.at(written);
        }
        file.flush().await.ctx(|| "cannot flush the download")?;
        bar.done(written);
        Ok(())
    }
}

/// Counts bytes per window; a window that closes below the floor ends the attempt.
struct RateFloor {
    window: Duration,
    floor: u64,
    started: Instant,
    seen: u64,
}

impl RateFloor {
    fn new(limits: &Limits) -> RateFloor {
        RateFloor {
            window: limits.window,
            floor: limits.floor,
            started: Instant::now(),
            seen: 0,
        }
    }

    fn window_end(&self) -> Instant {
        self.started + self.window
    }

    /// Whether the rate still holds after `n` more bytes.
    fn received(&mut self, n: u64) -> bool {
        self.seen += n;
        if Instant::now() < self.window_end() {
            return true;
        }
        let ok = self.seen >= self.floor;
        self.started = Instant::now();
        self.seen = 0;
        ok
    }

    fn describe(&self) -> String {
        format!(
            "too slow: fewer than {} bytes in {} s; resuming later",
            self.floor,
            self.window.as_secs_f32()
        )
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Where a 206 answer's `Content-Range: bytes <start>-<end>/<total>` starts.
fn range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

/// Small files (checksum lists), read whole up to `limit` bytes.
pub(super) async fn get_small(builder: &str, url: &str, limit: usize) -> Result<String> {
    let refused = |problem: String| Error::DownloadRefused {
        builder: builder.to_owned(),
        url: url.to_owned(),
        problem,
    };
    let broke = |e: reqwest::Error| Error::Download {
        uri: url.to_owned(),
        source: Box::new(e),
    };
    let resp = client(Trust::Unpinned)?
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(broke)?;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(broke)?);
        if body.len() > limit {
            return Err(refused(format!("is larger than {limit} bytes")));
        }
    }
    String::from_utf8(body).map_err(|_| refused("is not text".into()))
}

/// Partial downloads whose lock nobody holds (a run killed or given up mid-download), with
/// their validators: `runner gc` lists them; a later run would resume them.
pub fn stale_parts(downloads: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(downloads) else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = rd
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "part" || e == "validator")
        })
        .filter(|p| crate::host::lock_free(&p.with_extension("lock")))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn redirects_never_downgrade_and_unpinned_ones_stay_private() {
        let (https, http) = (url("https://a.example/x"), url("http://b.example/x"));
        let lo = url("http://127.0.0.1:9/x");
        for trust in [Trust::Pinned, Trust::Unpinned] {
            assert!(refuse_redirect(&https, &http, trust).is_some());
            assert!(refuse_redirect(&https, &lo, trust).is_some());
            assert!(refuse_redirect(&https, &url("https://c.example/"), trust).is_none());
        }
        assert!(refuse_redirect(&http, &http, Trust::Pinned).is_none());
        assert!(refuse_redirect(&lo, &http, Trust::Unpinned).is_some());
        assert!(refuse_redirect(&lo, &lo, Trust::Unpinned).is_none());
        assert!(refuse_redirect(&http, &url("ftp://b.example/x"), Trust::Pinned).is_some());
    }

    #[test]
    fn the_floor_holds_per_window() {
        let limits = Limits {
            window: Duration::ZERO,
            floor: 10,
            ..Limits::DEFAULT
        };
        let mut f = RateFloor::new(&limits);
        assert!(f.received(10));
        assert!(!f.received(9));
        assert!(f.received(11));
    }
}
