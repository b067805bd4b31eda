//! Log files kept for post-mortems: what failed should be readable without re-running, and a
//! guest that prints gigabytes cannot fill the host's disk: a target log keeps its head and
//! its tail within a limit, and says where and how much it left out.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// At most this much of a log's end is kept in memory once its head is full.
const MAX_TAIL: u64 = 4 << 20;

/// How many logs of one target are kept: the newest as `<target>.log`, the older ones as
/// `<target>.1.log` … (oldest last).
pub const KEEP_PER_TARGET: usize = 5;
/// How many machine console logs are kept, newest first.
pub const KEEP_CONSOLES: usize = 50;

/// Makes room for a new `dir/<stem>.log`: the current one becomes `<stem>.1.log`, and so on;
/// what falls off the end is removed.
pub fn rotate(path: &Path, keep: usize) {
    let numbered = |n: usize| path.with_extension(format!("{n}.log"));
    let _ = std::fs::remove_file(numbered(keep - 1));
    for n in (1..keep - 1).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    if keep > 1 {
        let _ = std::fs::rename(path, numbered(1));
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes all but the newest `keep` files in `dir` whose names end in `suffix`.
pub fn prune(dir: &Path, suffix: &str, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for (_, p) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}

/// The last `n` lines of a log, for error messages; empty if the file cannot be read. Reads
/// only the file's end.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut bytes = vec![];
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where a target's guest output goes: appended to its log file as it arrives, with the
/// latest complete line forwarded as an event so the progress line shows what the build
/// is doing. Clones share the file, so a command's stdout and stderr can both be sinks.
/// Writes are synchronous: lines are small and the disk is local.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<Inner>>);

struct Inner {
    file: std::fs::File,
    partial: Vec<u8>,
    on_line: Box<dyn FnMut(String) + Send>,
    /// Bytes the file may take before the rest goes to `tail`.
    head_room: u64,
    written: u64,
    /// The newest output past the head, at most `tail_room` bytes of it.
    tail: Ring,
    tail_room: usize,
    /// Bytes left out between the head and the tail so far.
    dropped: u64,
    finished: bool,
}

impl LogSink {
    /// A log of at most about `limit` bytes: its head, then (if the output is longer) a line
    /// saying what was left out, then its last `min(limit / 4, 4 MiB)` bytes.
    pub fn create(
        path: &Path,
        limit: u64,
        on_line: impl FnMut(String) + Send + 'static,
    ) -> std::io::Result<LogSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let tail_room = (limit / 4).min(MAX_TAIL);
        Ok(LogSink(Arc::new(Mutex::new(Inner {
            file,
            partial: Vec::new(),
            on_line: Box::new(on_line),
            head_room: limit - tail_room,
            written: 0,
            tail: Ring::new(tail_room as usize),
            tail_room: tail_room as usize,
            dropped: 0,
            finished: false,
        }))))
    }

    /// A note from runner itself, marked so it stands out from guest output.
    pub fn note(&self, text: &str) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .store(format!("[runner] {text}\n").as_bytes());
    }

    /// Writes out what the tail holds, after a line saying how much was left out. Returns
    /// that many bytes (0: nothing was). Later writes start a new tail.
    pub fn finish(&self) -> u64 {
        let mut me = self.0.lock().unwrap();
        if me.finished || me.dropped + me.tail.len() == 0 {
            me.finished = true;
            return me.dropped;
        }
        me.finished = true;
        let dropped = me.dropped;
        if dropped > 0 {
            let line = format!(
                "\n[runner] log truncated: {dropped} bytes of output left out here (the log \
                 keeps its first {} and its last {} bytes; `max_log_size` in [limits])\n",
                me.head_room, me.tail_room
            );
            let _ = me.file.write_all(line.as_bytes());
        }
        let tail = me.tail.take();
        let _ = me.file.write_all(&tail);
        dropped
    }

    fn take(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut me = self.0.lock().unwrap();
        me.store(buf)?;
        me.partial.extend_from_slice(buf);
        if let Some(end) = me.partial.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            let done: Vec<u8> = me.partial.drain(..=end).collect();
            if let Some(line) = done
                .split(|&b| b == b'\n' || b == b'\r')
                .rev()
                .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            {
                (me.on_line)(String::from_utf8_lossy(line).into_owned());
            }
        }
        // A guest printing without newlines must not grow this buffer without bound.
        if me.partial.len() > 4096 {
            me.partial.clear();
        }
        Ok(())
    }
}

impl Inner {
    /// Into the file while the head has room; then into the bounded tail.
    fn store(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.finished {
            return self.file.write_all(buf);
        }
        let room = self.head_room.saturating_sub(self.written) as usize;
        let (head, rest) = buf.split_at(room.min(buf.len()));
        if !head.is_empty() {
            self.file.write_all(head)?;
            self.written += head.len() as u64;
        }
        self.dropped += self.tail.push(rest);
        Ok(())
    }
}

/// The last `cap` bytes pushed into it.
struct Ring {
    buf: Vec<u8>,
    cap: usize,
    /// Where the next byte goes, once `buf` is full.
    next: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            cap,
            next: 0,
        }
    }

    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Keeps the newest `cap` bytes; returns how many older ones it let go.
    fn push(&mut self, mut data: &[u8]) -> u64 {
        let before = self.buf.len() as u64 + data.len() as u64;
        if data.len() >= self.cap {
            data = &data[data.len() - self.cap..];
            self.buf.clear();
            self.next = 0;
        }
        let fill = (self.cap - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..fill]);
        let mut rest = &data[fill..];
        while !rest.is_empty() {
            let n = (self.cap - self.next).min(rest.len());
            self.buf[self.next..self.next + n].copy_from_slice(&rest[..n]);
            self.next = (self.next + n) % self.cap;
            rest = &rest[n..];
        }
        before - self.buf.len() as u64
    }

    /// The bytes in order, oldest first; empties the ring.
    fn take(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.rotate_left(self.next);
        self.next = 0;
        out
    }
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.take(buf).map(|_| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.0.lock().unwrap().file.flush())
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_long_log_keeps_its_head_and_tail_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut sink = LogSink::create(&path, 64 << 10, |_| {}).unwrap();
        sink.note("start");
        for i in 0..100_000 {
            sink.write_all(format!("line {i}\n").as_bytes())
                .await
                .unwrap();
        }
        let dropped = sink.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(dropped > 500_000, "{dropped}");
        assert!(text.len() < (64 << 10) + 300, "{}", text.len());
        assert!(text.starts_with("[runner] start\nline 0\n"));
        assert!(text.contains(&format!("log truncated: {dropped} bytes")));
        assert!(text.ends_with("line 99999\n"));
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes() {
        let mut r = Ring::new(4);
        assert_eq!(r.push(b"ab"), 0);
        assert_eq!(r.push(b"cde"), 1);
        assert_eq!(r.push(b"f"), 1);
        assert_eq!(r.take(), b"cdef");
        let mut r = Ring::new(4);
        assert_eq!(r.push(b"0123456789"), 6);
        assert_eq!(r.take(), b"6789");
    }

    #[test]
    fn rotation_keeps_the_newest_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        for i in 0..7 {
            rotate(&path, 3);
            std::fs::write(&path, format!("{i}")).unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(
            (read("t.log"), read("t.1.log"), read("t.2.log")),
            ("6".into(), "5".into(), "4".into())
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[tokio::test]
    async fn a_short_log_is_left_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut sink = LogSink::create(&path, 64 << 10, |_| {}).unwrap();
        sink.write_all(b"hello\n").await.unwrap();
        assert_eq!(sink.finish(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    }
}
