//! A build cache inside the guest: the disk with serial [`SERIAL`] mounted at
//! [`MOUNT`], each cached path bind-mounted from it before the script runs, and the
//! filesystem frozen once the artifacts are out, so the host can copy a consistent image
//! while the machine still runs.
//!
//! Everything here runs as root through [`Guest::exec`]. The guest may lie about any of it;
//! what it can spoil is only the cache of its own key, which its build writes anyway.

use super::{Guest, quote};
use crate::error::{Error, Result};
use crate::logs::LogSink;

/// The serial of the cache's disk, which the machine's backend attaches.
pub const SERIAL: &str = "runner-cache";

/// Where the cache's filesystem is mounted; each cached path is a directory below
/// `MOUNT/paths`, named by the path itself.
pub const MOUNT: &str = "/run/runner-cache";

/// Mounts the cache and binds every path in `paths` (absolute, checked by the config) onto
/// its directory in it. `noinit_itable`: the filesystem's inode tables stay as they are, not
/// zeroed in the background by the build.
pub async fn mount(guest: &dyn Guest, paths: &[String], log: &LogSink) -> Result<()> {
    let mut cmd = format!(
        "dev=; for d in /sys/block/vd*; do \
           [ \"$(cat $d/serial 2>/dev/null)\" = {s} ] && dev=/dev/${{d##*/}}; done; \
         [ -n \"$dev\" ] || {{ echo 'no disk with serial {s}' >&2; exit 1; }}; \
         mkdir -p {MOUNT} && mount -t ext4 -o discard,noinit_itable \"$dev\" {MOUNT} || exit 1",
        s = quote(SERIAL)
    );
    cmd.push_str(&binds(MOUNT, paths));
    run(guest, "mounting the build cache", &cmd, log).await
}

/// The shell steps binding each path onto its directory below `base/paths`. A path's
/// directory is made, the first time, as a copy of what the image has there (an empty apt
/// archive still needs its `partial/`).
pub(super) fn binds(base: &str, paths: &[String]) -> String {
    let mut cmd = String::new();
    for p in paths {
        let (p, c) = (quote(p), quote(&format!("{base}/paths{p}")));
        cmd.push_str(&format!(
            "; if [ ! -d {c} ]; then mkdir -p \"$(dirname {c})\" && \
               if [ -d {p} ]; then cp -a {p} {c}; else mkdir -p {c}; fi || exit 1; fi; \
             mkdir -p {p} && mount --bind {c} {p} || exit 1"
        ));
    }
    cmd
}

/// Flushes and freezes the cache's filesystem: from here on its disk does not change, and
/// every block the guest wrote has reached the host's file. The machine is torn down
/// frozen.
pub async fn seal(guest: &dyn Guest, log: &LogSink) -> Result<()> {
    let cmd = format!("sync -f {MOUNT} && fsfreeze -f {MOUNT}");
    run(guest, "freezing the build cache", &cmd, log).await
}

/// Undoes [`seal`], as well as it can (a failed step's machine may be kept for inspection).
pub async fn thaw(guest: &dyn Guest, log: &LogSink) {
    let cmd = format!("fsfreeze -u {MOUNT}");
    let _ = run(guest, "thawing the build cache", &cmd, log).await;
}

async fn run(guest: &dyn Guest, what: &str, cmd: &str, log: &LogSink) -> Result<()> {
    let status = guest
        .exec(cmd, None, Box::new(log.clone()), Box::new(log.clone()))
        .await?;
    if status.success() {
        return Ok(());
    }
    Err(Error::Guest {
        what: what.into(),
        status: status.to_string(),
    })
}
