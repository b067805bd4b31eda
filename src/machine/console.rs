//! A machine's serial console, read by runner itself. QEMU writes the guest's serial port to
//! a pipe (`-serial stdio`) rather than to a file of its own (`-serial file:`), because a
//! file QEMU writes cannot be capped: a guest printing to its serial port for as long as its
//! target's timeout allows would fill the host's disk. Runner streams the pipe into a
//! [`LogSink`] (the head and tail of a target log, within its limit) and looks for the boot
//! markers as the bytes go by, so readiness, "how far the boot got" and warm starts need
//! no re-reading of the file (which, once capped, no longer holds all of it anyway).
//!
//! The pipe is always drained, whatever happens to the log: QEMU's write to a full pipe
//! blocks its device emulation. Once runner is gone (SIGKILL, `--keep-failed`), QEMU's
//! writes fail and the guest's serial output is dropped; the guest goes on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::logs::LogSink;

/// A console being read: which markers it has shown, and when.
#[derive(Clone)]
pub struct Console {
    seen: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    ended: watch::Receiver<bool>,
}

impl Console {
    /// Streams `from` into `log` until it ends (the machine's process exited), noting each of
    /// `markers` the first time it appears. The log is finished (its tail written) at the end.
    pub fn spawn(
        mut from: impl AsyncRead + Unpin + Send + 'static,
        mut log: LogSink,
        markers: Vec<&'static str>,
    ) -> Console {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done, ended) = watch::channel(false);
        let mut scan = Scan::new(markers, seen.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                scan.push(&buf[..n]);
                // A log that cannot be written (a full disk) must not stop the draining.
                let _ = log.write_all(&buf[..n]).await;
            }
            log.finish();
            let _ = done.send(true);
        });
        Console { seen, ended }
    }

    /// When `marker` (one of those it watches for) first appeared.
    pub fn seen(&self, marker: &str) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.iter().find(|(m, _)| *m == marker).map(|(_, at)| *at)
    }

    /// Waits up to `within` for the console to end and its log to be complete (the machine
    /// has stopped, or is being stopped).
    pub async fn closed(&self, within: Duration) {
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(within, ended.wait_for(|e| *e)).await;
    }
}

/// Finds markers in a stream that arrives in pieces: the end of each piece is kept, so a
/// marker split across two reads is still found.
struct Scan {
    markers: Vec<&'static str>,
    seen: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    carry: Vec<u8>,
    longest: usize,
}

impl Scan {
    fn new(markers: Vec<&'static str>, seen: Arc<Mutex<Vec<(&'static str, Instant)>>>) -> Scan {
        let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
        Scan {
            markers,
            seen,
            carry: Vec::new(),
            longest,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.carry.extend_from_slice(data);
        let mut seen = self.seen.lock().unwrap();
        for m in &self.markers {
            if !seen.iter().any(|(s, _)| s == m)
                && memchr::memmem::find(&self.carry, m.as_bytes()).is_some()
            {
                seen.push((*m, Instant::now()));
            }
        }
        let keep = self.longest.saturating_sub(1);
        let cut = self.carry.len().saturating_sub(keep);
        self.carry.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn markers_split_across_reads_are_found_and_the_log_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let log = LogSink::create(&path, 64 << 10, |_| {}).unwrap();
        let (mut w, r) = tokio::io::duplex(64);
        let console = Console::spawn(r, log, vec!["runner-initrd: start", "Server listening"]);
        w.write_all(b"boot\nrunner-initrd: st").await.unwrap();
        w.flush().await.unwrap();
        w.write_all(b"art\n").await.unwrap();
        for _ in 0..20_000 {
            w.write_all(b"noise noise noise noise\n").await.unwrap();
        }
        w.write_all(b"Server listening on 0.0.0.0 port 22.\n")
            .await
            .unwrap();
        drop(w);
        console.closed(Duration::from_secs(10)).await;
        assert!(console.seen("runner-initrd: start").is_some());
        assert!(console.seen("Server listening").is_some());
        assert!(console.seen("not watched").is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < (64 << 10) + 300, "{}", text.len());
        assert!(text.starts_with("boot\nrunner-initrd: start\n"));
        assert!(text.contains("log truncated"));
        assert!(text.ends_with("Server listening on 0.0.0.0 port 22.\n"));
    }
}
