//! Context in: a deterministic tar produced on a blocking thread, streamed over one SSH exec
//! channel into the guest's `tar -x`.

use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use super::{OUT, SRC, Session};
use crate::context::{Context, TarSummary, write_tar};
use crate::error::{Error, Result, joined};
use crate::logs::LogSink;

/// Sized so a blocking producer rarely waits on the SSH writer.
pub(super) const PIPE: usize = 1 << 20;

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
    // The producer's error explains a failed unpack better than tar's exit status does.
    let summary = joined("the context writer", producer).await?;
    match status? {
        s if s.success() => Ok(summary),
        s => Err(Error::Guest {
            what: "unpacking the context".into(),
            status: s.to_string(),
        }),
    }
}
