//! Context in, three ways, every one ending with the same tree in `/build/src`:
//! - attached: the context pack's filesystem image is a read-only disk of the machine; the
//!   guest mounts it and lays a writable overlay over it — no context byte crosses SSH;
//! - fetched: the guest downloads the pack by a (presigned) URL, checks its sha256, unpacks;
//! - streamed: the pack's tar over one SSH exec channel, zstd-compressed when asked.

use std::path::Path;
use std::process::Stdio;

use super::{OUT, SRC, Session, quote};
use crate::error::{Error, IoContext, Result};
use crate::logs::LogSink;

/// Sized so a blocking producer rarely waits on the SSH writer.
pub(super) const PIPE: usize = 1 << 20;

/// How a context pack reaches the guest.
pub enum Delivery<'a> {
    /// The pack's image is attached as a disk with this serial.
    Attached { serial: &'a str },
    /// The pack's tar, sent over SSH.
    Streamed { tar: &'a Path, compress: bool },
    /// Fetched by the guest from `url` (its tar, zstd-compressed), refused before anything
    /// is unpacked unless the download has `sha256`; `connect_to` maps the URL's
    /// `host:port` to one the guest can reach.
    Fetched {
        url: &'a str,
        sha256: &'a str,
        connect_to: Option<String>,
    },
}

/// Whatever a previous delivery left (none in a fresh machine, but `vm` sessions reuse one).
/// `/build` itself stays writable by whoever logs in (a cloud image's user, as in
/// `runner vm shell`), as the guest contract promises.
const FRESH: &str = "umount /build/src /build/.ctx 2>/dev/null; rm -rf /build && \
                     install -d -m 1777 /build && mkdir -p /build/src";

pub async fn deliver(session: &Session, how: &Delivery<'_>, log: &LogSink) -> Result<()> {
    match how {
        Delivery::Attached { serial } => mount(session, serial, log).await,
        Delivery::Streamed { tar, compress } => stream(session, tar, *compress, log).await,
        Delivery::Fetched {
            url,
            sha256,
            connect_to,
        } => fetch(session, url, sha256, connect_to.as_deref(), log).await,
    }
}

/// The attached image, read-only, under a writable overlay (in the root disk, so a build
/// may write as much as its disk holds). Its `lost+found` is hidden from the tree.
async fn mount(session: &Session, serial: &str, log: &LogSink) -> Result<()> {
    let cmd = format!(
        "{FRESH} /build/.ctx /build/.upper /build/.work {OUT} && \
         for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = {s} ] && dev=/dev/${{d##*/}}; done; \
         [ -n \"$dev\" ] || {{ echo 'no disk with serial {s}' >&2; exit 1; }}; \
         mount -t ext4 -o ro,noload \"$dev\" /build/.ctx && \
         mount -t overlay overlay -o lowerdir=/build/.ctx,upperdir=/build/.upper,workdir=/build/.work {SRC} && \
         rmdir {SRC}/lost+found",
        s = quote(serial)
    );
    check(session, "mounting the context", &cmd, log).await
}

/// The pack's tar from the host's cache, through `zstd` on both sides when `compress`.
async fn stream(session: &Session, tar: &Path, compress: bool, log: &LogSink) -> Result<()> {
    let unpack = format!("{FRESH} {OUT} && tar -x -f - -C {SRC} --no-same-owner");
    if !compress {
        let file = tokio::fs::File::open(tar)
            .await
            .ctx(|| format!("cannot open `{}`", tar.display()))?;
        let status = session
            .exec(&unpack, Some(file), log.clone(), log.clone())
            .await?;
        return ok(status, "unpacking the context");
    }
    let mut zstd = tokio::process::Command::new("zstd")
        .args(["-q", "-c", "-3", "-T0"])
        .arg(tar)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ctx(|| "cannot run zstd (is it installed?)")?;
    let out = zstd.stdout.take().expect("piped");
    let cmd = format!("{FRESH} {OUT} && zstd -q -d -c | tar -x -f - -C {SRC} --no-same-owner");
    let status = session
        .exec(&cmd, Some(out), log.clone(), log.clone())
        .await;
    let _ = zstd.wait().await;
    ok(status?, "unpacking the compressed context")
}

/// Downloads the pack, checks it against its digest before anything is unpacked.
async fn fetch(
    session: &Session,
    url: &str,
    sha256: &str,
    connect_to: Option<&str>,
    log: &LogSink,
) -> Result<()> {
    let via = connect_to.map_or(String::new(), |c| format!("--connect-to {} ", quote(c)));
    let cmd = format!(
        "{FRESH} {OUT} && \
         {{ [ -s {pre} ] && mv {pre} /build/.pack.tar.zst || curl -fsS --retry 3 {via}-o /build/.pack.tar.zst {url}; }} && \
         got=$(sha256sum < /build/.pack.tar.zst) && got=${{got%% *}} && \
         if [ \"$got\" != {want} ]; then \
           echo \"context pack refused: sha256 $got, expected {want}\" >&2; exit 3; fi && \
         zstd -q -d -c /build/.pack.tar.zst | tar -x -f - -C {SRC} --no-same-owner && \
         rm -f /build/.pack.tar.zst",
        url = quote(url),
        want = quote(sha256),
        pre = super::PREFETCHED_PACK
    );
    let status = session
        .exec(&cmd, None::<tokio::io::Empty>, log.clone(), log.clone())
        .await?;
    if status == super::ExitStatus::Code(3) {
        return Err(Error::Guest {
            what: "checking the fetched context pack".into(),
            status: format!("refused: its sha256 is not {sha256}, the pack's (see the log)"),
        });
    }
    ok(status, "fetching the context")
}

async fn check(session: &Session, what: &str, cmd: &str, log: &LogSink) -> Result<()> {
    let status = session
        .exec(cmd, None::<tokio::io::Empty>, log.clone(), log.clone())
        .await?;
    ok(status, what)
}

fn ok(status: super::ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Error::Guest {
            what: what.into(),
            status: status.to_string(),
        })
    }
}
