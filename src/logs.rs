//! Log files kept for post-mortems: what failed should be readable without re-running.

use std::path::Path;

/// The last `n` lines of a log, for error messages; empty if the file cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where a target's guest output goes: appended to its log file as it arrives, with the
/// latest complete line forwarded as an event so the progress line shows what the build
/// is doing. Clones share the file, so a command's stdout and stderr can both be sinks.
/// Writes are synchronous: lines are small and the disk is local.
#[derive(Clone)]
pub struct LogSink(std::sync::Arc<std::sync::Mutex<Inner>>);

struct Inner {
    file: std::fs::File,
    partial: Vec<u8>,
    on_line: Box<dyn FnMut(String) + Send>,
}

impl LogSink {
    pub fn create(
        path: &Path,
        on_line: impl FnMut(String) + Send + 'static,
    ) -> std::io::Result<LogSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogSink(std::sync::Arc::new(std::sync::Mutex::new(Inner {
            file,
            partial: Vec::new(),
            on_line: Box::new(on_line),
        }))))
    }

    /// A note from runner itself, marked so it stands out from guest output.
    pub fn note(&self, text: &str) {
        use std::io::Write;
        let _ = writeln!(self.0.lock().unwrap().file, "[runner] {text}");
    }

    fn take(&self, buf: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut me = self.0.lock().unwrap();
        me.file.write_all(buf)?;
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
        std::task::Poll::Ready(std::io::Write::flush(&mut self.0.lock().unwrap().file))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}
