//! A build cache carried as an archive, for machines that take no cache disk: the guest
//! downloads the key's newest archive by presigned URL into [`LOCAL`] (on its root disk,
//! not the `/run` tmpfs), binds the cached paths from there as for a disk, and after the
//! artifacts are out packs [`LOCAL`] again and uploads it by a presigned URL that the store
//! honours only for the size and SHA-256 the host signed.
//!
//! The archive is the guest's own key's: whatever a hostile guest puts in it reaches only
//! later builds of that key, which it could spoil through the cached paths anyway. What the
//! host takes from the guest is two numbers, parsed and checked here.

use super::{Guest, quote};
use crate::error::{Error, Result};
use crate::logs::LogSink;

/// Where the cache lives in the guest; each cached path is a directory below `LOCAL/paths`.
pub const LOCAL: &str = "/var/lib/runner-cache";

/// The archive a machine starts from.
pub struct Archive<'a> {
    pub url: &'a str,
    pub sha256: &'a str,
    pub bytes: u64,
    /// `host:port:alias:port` when the URL names the host's loopback (see `--connect-to`).
    pub connect_to: Option<&'a str>,
}

/// Fetches `from` (nothing: the cache starts empty) into [`LOCAL`] and binds `paths` onto it.
/// Returns `false` when the archive could not be had or was not the one named (the cache
/// then starts empty, which the caller logs): a cache is never needed for a correct build.
pub async fn fetch(
    guest: &dyn Guest,
    paths: &[String],
    from: Option<&Archive<'_>>,
    log: &LogSink,
) -> Result<bool> {
    let l = LOCAL;
    let mut cmd = format!("rm -rf {l} && mkdir -p {l}/paths || exit 1; fresh=");
    if let Some(a) = from {
        let via = a
            .connect_to
            .map_or(String::new(), |c| format!("--connect-to {} ", quote(c)));
        cmd.push_str(&format!(
            "; if curl -fsS --retry 3 --max-filesize {bytes} {via}-o {l}/in.tar.zst {url} && \
                got=$(sha256sum < {l}/in.tar.zst) && [ \"${{got%% *}}\" = {want} ] && \
                zstd -q -d -c {l}/in.tar.zst | tar -x -f - -C {l}/paths; \
             then rm -f {l}/in.tar.zst; \
             else echo 'the cache archive is not usable; starting empty' >&2; \
                  rm -rf {l}/paths {l}/in.tar.zst; mkdir -p {l}/paths || exit 1; fresh=1; fi",
            bytes = a.bytes.max(1),
            url = quote(a.url),
            want = quote(a.sha256),
        ));
    }
    cmd.push_str(&super::cache::binds(l, paths));
    cmd.push_str("; [ -z \"$fresh\" ] || exit 3");
    let status = guest
        .exec(&cmd, None, Box::new(log.clone()), Box::new(log.clone()))
        .await?;
    match status {
        super::ExitStatus::Code(0) => Ok(true),
        super::ExitStatus::Code(3) => Ok(false),
        other => Err(Error::Guest {
            what: "fetching the build cache".into(),
            status: other.to_string(),
        }),
    }
}

/// Packs [`LOCAL`] into an archive in the guest; returns its size and SHA-256 (64 lowercase
/// hex digits), as the guest says (the store holds it to them on upload).
pub async fn pack(guest: &dyn Guest, log: &LogSink) -> Result<(u64, String)> {
    let l = LOCAL;
    let cmd = format!(
        "sync && rm -f {l}/out.tar {l}/out.tar.zst && \
         tar -c -f {l}/out.tar -C {l}/paths . && \
         zstd -q -T0 -3 --rm -o {l}/out.tar.zst {l}/out.tar && \
         stat -c %s {l}/out.tar.zst && sha256sum < {l}/out.tar.zst"
    );
    let said = output(guest, &cmd, log).await?;
    let mut words = said.split_whitespace();
    let bytes = words.next().and_then(|b| b.parse::<u64>().ok());
    let sha256 = words
        .next()
        .filter(|s| crate::config::names::is_sha256_lower(s));
    match (bytes, sha256) {
        (Some(b), Some(s)) => Ok((b, s.to_owned())),
        _ => Err(Error::Guest {
            what: "packing the build cache".into(),
            status: format!("answered `{}`, not a size and a SHA-256", said.trim()),
        }),
    }
}

/// Uploads the packed archive to `url` with the signed `headers` (the store checks them).
pub async fn push(
    guest: &dyn Guest,
    (url, headers): (&str, &[(String, String)]),
    connect_to: Option<&str>,
    log: &LogSink,
) -> Result<()> {
    let l = LOCAL;
    let mut cmd = format!("curl -fsS --retry 3 -X PUT -T {l}/out.tar.zst");
    if let Some(c) = connect_to {
        cmd.push_str(&format!(" --connect-to {}", quote(c)));
    }
    // curl sends the file's own length; the store refuses any other than the signed one.
    for (k, v) in headers.iter().filter(|(k, _)| k != "content-length") {
        cmd.push_str(&format!(" -H {}", quote(&format!("{k}: {v}"))));
    }
    cmd.push_str(&format!(" {} && rm -f {l}/out.tar.zst", quote(url)));
    let status = guest
        .exec(&cmd, None, Box::new(log.clone()), Box::new(log.clone()))
        .await?;
    if status.success() {
        return Ok(());
    }
    Err(Error::Guest {
        what: "uploading the build cache".into(),
        status: status.to_string(),
    })
}

/// A command's stdout, at most a few hundred bytes of it (the rest is the guest
/// misbehaving); stderr goes to the log.
async fn output(guest: &dyn Guest, cmd: &str, log: &LogSink) -> Result<String> {
    use tokio::io::AsyncReadExt;
    const CAP: u64 = 512;
    let (tx, rx) = tokio::io::duplex(4096);
    let (mut said, mut rx) = (Vec::new(), rx.take(CAP + 1));
    let (status, read) = tokio::join!(
        guest.exec(cmd, None, Box::new(tx), Box::new(log.clone())),
        rx.read_to_end(&mut said)
    );
    let status = status?;
    if !status.success() || read.is_err() || said.len() as u64 > CAP {
        return Err(Error::Guest {
            what: "packing the build cache".into(),
            status: if status.success() {
                format!("said more than {CAP} bytes")
            } else {
                status.to_string()
            },
        });
    }
    Ok(String::from_utf8_lossy(&said).into_owned())
}
