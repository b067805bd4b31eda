//! Artifacts out: the guest lists what is in `RUNNER_OUT`, runner picks the names the globs
//! ask for, and the guest's tar of exactly those is unpacked defensively on a blocking thread.
//! The guest's listing only chooses names; what arrives is checked entry by entry, and
//! anything not asked for is refused.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tokio_util::io::SyncIoBridge;

use super::sync::PIPE;
use super::{OUT, Session};
use crate::artifacts::{self, ArtifactFile, Limits};
use crate::error::{Error, Result, joined};
use crate::logs::LogSink;

/// At most this much is read after a tar's end marker (GNU tar pads to 10 KiB records).
const TAR_TAIL: u64 = 1 << 20;

/// Pulls the artifacts matching `globs` (all files when empty) from [`OUT`] into `dest`.
/// The guest's listing only chooses names; what arrives is checked entry by entry, and
/// anything not asked for is refused.
pub async fn collect(
    session: &Session,
    globs: &[String],
    dest: &Path,
    limits: &Limits,
    compress: bool,
    log: &LogSink,
) -> Result<Vec<ArtifactFile>> {
    let names = listing(session, limits).await?;
    let wanted = select(&names, globs)?;
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    // Compressed only where it pays (a remote machine) and the guest has zstd.
    let compress = compress && session.output("command -v zstd").await.is_ok();
    let files = transfer(session, &wanted, dest, limits, compress, log).await?;
    let got: BTreeSet<String> = files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    if got != wanted {
        let extra: Vec<&String> = got.difference(&wanted).collect();
        let missing: Vec<&String> = wanted.difference(&got).collect();
        return Err(Error::ArtifactRefused(format!(
            "the guest sent other files than asked for (unexpected: {extra:?}, missing: {missing:?})"
        )));
    }
    Ok(files)
}

/// The bytes a listing of `max_entries` names may take: room for names of 256 bytes on
/// average, within [1 MiB, 32 MiB]. The guest's `find` decides how much it prints (it may be
/// an endless stream); runner stops reading at this cap, not after the whole of it arrived.
fn listing_cap(max_entries: u64) -> u64 {
    max_entries.saturating_mul(256).clamp(1 << 20, 32 << 20)
}

/// What the guest says is in `RUNNER_OUT`: names only, capped in number and in bytes.
async fn listing(session: &Session, limits: &Limits) -> Result<Vec<String>> {
    let find = format!("cd {OUT} && find . -type f -print0");
    let listing = session
        .output_within(&find, listing_cap(limits.max_entries))
        .await?;
    let names: Vec<String> = listing
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| {
            String::from_utf8_lossy(n)
                .trim_start_matches("./")
                .to_owned()
        })
        .collect();
    if names.len() as u64 > limits.max_entries {
        return Err(Error::ArtifactRefused(format!(
            "the guest lists {} files in $RUNNER_OUT, over the limit of {}",
            names.len(),
            limits.max_entries
        )));
    }
    Ok(names)
}

/// The guest's tar of `wanted`, unpacked into `dest` under the hostile-tar rules; through
/// zstd when `compress` (decompressed by a host `zstd` process: the limits apply to what
/// comes out of it, whatever the guest says of sizes).
async fn transfer(
    session: &Session,
    wanted: &BTreeSet<String>,
    dest: &Path,
    limits: &Limits,
    compress: bool,
    log: &LogSink,
) -> Result<Vec<ArtifactFile>> {
    let list: Vec<u8> = wanted.iter().flat_map(|n| n.bytes().chain([0])).collect();
    let (dest, limits) = (dest.to_owned(), *limits);
    let tar = format!("cd {OUT} && tar --null --no-recursion -T - -c -f -");
    let status;
    let unpacked = if compress {
        let mut zstd = tokio::process::Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Io {
                context: "cannot run zstd (is it installed?)".into(),
                source,
            })?;
        let (into, out) = (
            zstd.stdin.take().expect("piped"),
            zstd.stdout.take().expect("piped"),
        );
        let consumer = unpacker(SyncIoBridge::new(out), dest, limits);
        let cmd = format!("{tar} | zstd -q -c -1");
        status = session
            .exec(&cmd, Some(Cursor::new(list)), into, log.clone())
            .await;
        let unpacked = joined("the artifact reader", consumer).await;
        let _ = zstd.wait().await;
        unpacked
    } else {
        let (w, r) = tokio::io::duplex(PIPE);
        let consumer = unpacker(SyncIoBridge::new(r), dest, limits);
        status = session
            .exec(&tar, Some(Cursor::new(list)), w, log.clone())
            .await;
        joined("the artifact reader", consumer).await
    };
    // An unpack refusal (hostile entry, limit) is the real story; report it first.
    let unpacked = unpacked?;
    match status? {
        s if s.success() => Ok(unpacked.files),
        s => Err(Error::Guest {
            what: "packing artifacts".into(),
            status: s.to_string(),
        }),
    }
}

/// Unpacks the stream on a blocking thread.
fn unpacker<R: std::io::Read + Send + 'static>(
    bridge: R,
    dest: std::path::PathBuf,
    limits: Limits,
) -> tokio::task::JoinHandle<Result<artifacts::Unpacked>> {
    tokio::task::spawn_blocking(move || {
        let mut bridge = bridge;
        let unpacked = artifacts::unpack(&mut bridge, &dest, &limits);
        // tar pads its archive past the end-of-archive blocks (to a whole 10 KiB record).
        // Reading stops at the end marker, so read that tail too, or the guest's tar can meet
        // a broken pipe (a flaky "cannot write remote command output"). Bounded: a guest
        // that keeps sending after the end gets its broken pipe.
        if unpacked.is_ok() {
            let _ = std::io::copy(
                &mut std::io::Read::take(&mut bridge, TAR_TAIL),
                &mut std::io::sink(),
            );
        }
        unpacked
    })
}

/// Names matching any glob; every glob must match something, or the build is wrong.
fn select(names: &[String], globs: &[String]) -> Result<BTreeSet<String>> {
    let mut wanted = BTreeSet::new();
    if globs.is_empty() {
        wanted.extend(names.iter().cloned());
        return Ok(wanted);
    }
    for g in globs {
        // Globs were checked when the config was loaded; one that fails here matches nothing.
        let set = GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .ok()
            .and_then(|glob| GlobSetBuilder::new().add(glob).build().ok())
            .unwrap_or_else(GlobSet::empty);
        let hits: Vec<&String> = names.iter().filter(|n| set.is_match(n.as_str())).collect();
        if hits.is_empty() {
            return Err(Error::ArtifactRefused(format!(
                "artifact pattern `{g}` matched nothing in $RUNNER_OUT"
            )));
        }
        wanted.extend(hits.into_iter().cloned());
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glob_must_match_and_star_stays_in_its_directory() {
        let names: Vec<String> = ["hello", "sub/hello.o", "x.deb"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = select(&names, &["*.deb".into(), "hello".into()]).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["hello", "x.deb"]);
        assert!(
            select(&names, &["*.o".into()]).is_err(),
            "`*` must not cross `/`"
        );
        assert_eq!(select(&names, &["**/*.o".into()]).unwrap().len(), 1);
        assert_eq!(select(&names, &[]).unwrap().len(), 3);
    }

    #[test]
    fn the_listing_cap_grows_with_the_file_limit_within_bounds() {
        assert_eq!(listing_cap(10), 1 << 20);
        assert_eq!(listing_cap(100_000), 25_600_000);
        assert_eq!(listing_cap(u64::MAX), 32 << 20);
    }
}
