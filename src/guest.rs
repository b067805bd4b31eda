//! The build side of the guest contract: the context is unpacked in [`SRC`], the script runs
//! there with `RUNNER_OUT` = [`OUT`], and artifacts are taken from [`OUT`]. Every transfer is a
//! tar stream over one SSH exec channel, produced or consumed on a blocking thread.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tokio_util::io::SyncIoBridge;

use crate::artifacts::{self, ArtifactFile, Limits};
use crate::context::{Context, TarSummary, write_tar};
use crate::error::{Error, Result};
use crate::logs::LogSink;
use crate::ssh::{ExitStatus, Session};

pub const SRC: &str = "/build/src";
pub const OUT: &str = "/build/out";
const SCRIPT: &str = "/build/provision";

/// Sized so a blocking producer rarely waits on the SSH writer.
const PIPE: usize = 1 << 20;
/// At most this much is read after a tar's end marker (GNU tar pads to 10 KiB records).
const TAR_TAIL: u64 = 1 << 20;

/// Streams the build context into [`SRC`] (replacing anything there).
pub async fn sync_context(
    session: &Session,
    ctx: Arc<Context>,
    mtime: u64,
    log: &LogSink,
) -> Result<TarSummary> {
    let (w, r) = tokio::io::duplex(PIPE);
    let bridge = SyncIoBridge::new(w);
    let producer = tokio::task::spawn_blocking(move || write_tar(&ctx, bridge, mtime));
    let cmd =
        format!("rm -rf /build && mkdir -p {SRC} {OUT} && tar -x -f - -C {SRC} --no-same-owner");
    let status = session.exec(&cmd, Some(r), log.clone(), log.clone()).await;
    let produced = producer
        .await
        .map_err(|e| Error::other(format!("context writer panicked: {e}")))?;
    // The producer's error explains a failed unpack better than tar's exit status does.
    let summary = produced?;
    match status? {
        s if s.success() => Ok(summary),
        s => Err(Error::other(format!(
            "unpacking the context in the guest failed ({s})"
        ))),
    }
}

/// Uploads and runs the provision script with the target's environment, output to `log`.
pub async fn run_script(
    session: &Session,
    script: &[u8],
    env: &[(String, String)],
    log: &LogSink,
) -> Result<ExitStatus> {
    let upload = format!("cat > {SCRIPT} && chmod 755 {SCRIPT}");
    let status = session
        .exec(
            &upload,
            Some(Cursor::new(script.to_vec())),
            log.clone(),
            log.clone(),
        )
        .await?;
    if !status.success() {
        return Err(Error::other(format!(
            "cannot upload the provision script ({status})"
        )));
    }
    let assignments: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    let cmd = format!("cd {SRC} && {} {SCRIPT}", assignments.join(" "));
    session
        .exec(&cmd, None::<tokio::io::Empty>, log.clone(), log.clone())
        .await
}

/// Pulls the artifacts matching `globs` (all files when empty) from [`OUT`] into `dest`.
/// The guest's listing only chooses names; what arrives is checked entry by entry, and
/// anything not asked for is refused.
pub async fn collect(
    session: &Session,
    globs: &[String],
    dest: &Path,
    limits: &Limits,
    log: &LogSink,
) -> Result<Vec<ArtifactFile>> {
    let listing = session
        .output(&format!("cd {OUT} && find . -type f -print0"))
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
        return Err(Error::other(format!(
            "the guest lists {} files in $RUNNER_OUT, over the limit of {}",
            names.len(),
            limits.max_entries
        )));
    }
    let wanted = select(&names, globs)?;
    if wanted.is_empty() {
        return Ok(vec![]);
    }

    let list: Vec<u8> = wanted.iter().flat_map(|n| n.bytes().chain([0])).collect();
    let (w, r) = tokio::io::duplex(PIPE);
    let bridge = SyncIoBridge::new(r);
    let (dest_owned, limits) = (dest.to_owned(), *limits);
    let consumer = tokio::task::spawn_blocking(move || {
        let mut bridge = bridge;
        let unpacked = artifacts::unpack(&mut bridge, &dest_owned, &limits);
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
    });
    let cmd = format!("cd {OUT} && tar --null --no-recursion -T - -c -f -");
    let status = session
        .exec(&cmd, Some(Cursor::new(list)), w, log.clone())
        .await;
    let unpacked = consumer
        .await
        .map_err(|e| Error::other(format!("artifact reader panicked: {e}")))?;
    // An unpack refusal (hostile entry, limit) is the real story; report it first.
    let unpacked = unpacked?;
    match status? {
        s if s.success() => {}
        s => {
            return Err(Error::other(format!(
                "packing artifacts in the guest failed ({s})"
            )));
        }
    }
    let got: BTreeSet<String> = unpacked
        .files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    if got != wanted {
        let extra: Vec<&String> = got.difference(&wanted).collect();
        let missing: Vec<&String> = wanted.difference(&got).collect();
        return Err(Error::other(format!(
            "the guest sent other files than asked for (unexpected: {extra:?}, missing: {missing:?})"
        )));
    }
    Ok(unpacked.files)
}

/// Names matching any glob; every glob must match something, or the build is wrong.
fn select(names: &[String], globs: &[String]) -> Result<BTreeSet<String>> {
    if globs.is_empty() {
        return Ok(names.iter().cloned().collect());
    }
    let compiled: Vec<GlobSet> = globs
        .iter()
        .map(|g| {
            let glob = GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::other(format!("bad artifact pattern `{g}`: {e}")))?;
            GlobSetBuilder::new()
                .add(glob)
                .build()
                .map_err(|e| Error::other(format!("bad artifact pattern `{g}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut wanted = BTreeSet::new();
    for (g, set) in globs.iter().zip(&compiled) {
        let hits: Vec<&String> = names.iter().filter(|n| set.is_match(n.as_str())).collect();
        if hits.is_empty() {
            return Err(Error::other(format!(
                "artifact pattern `{g}` matched nothing in $RUNNER_OUT"
            )));
        }
        wanted.extend(hits.into_iter().cloned());
    }
    Ok(wanted)
}

/// Single-quotes a value for the guest's POSIX shell.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

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
}
