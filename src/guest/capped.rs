//! Bounded buffers for what a guest command prints: the guest decides how much it sends, so
//! runner decides how much it keeps.

use tokio::io::AsyncWrite;

/// What [`super::Session::output`] keeps of a command's stdout by default: its answers are short
/// (names, a path, a yes or no); a longer one is a guest misbehaving.
pub const OUTPUT_CAP: u64 = 1 << 20;
/// What [`super::Session::output`] keeps of a command's stderr, for its error message.
pub const STDERR_CAP: u64 = 64 << 10;

/// A buffer that takes at most `cap` bytes, then refuses every write (and says so in `over`).
pub struct Capped {
    pub buf: Vec<u8>,
    pub cap: u64,
    pub over: bool,
}

impl Capped {
    pub fn new(cap: u64) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
            over: false,
        }
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() as u64 + data.len() as u64 > self.cap {
            self.over = true;
            let e = std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over its cap");
            return std::task::Poll::Ready(Err(e));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_capped_buffer_refuses_the_write_that_passes_its_cap() {
        let mut c = Capped::new(8);
        c.write_all(b"12345678").await.unwrap();
        assert!(!c.over);
        assert!(c.write_all(b"9").await.is_err());
        assert!(c.over);
        assert_eq!(c.buf, b"12345678");
    }
}
