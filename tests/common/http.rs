//! A loopback HTTP/1.1 file server for download tests: serves files from a directory with
//! range requests, logs every request, and can break off its first answers part-way (as a
//! dropped connection does) to exercise resuming.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One request: the path and its `Range` header, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

pub struct FileServer {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Request>>>,
}

impl FileServer {
    /// Serves `root`. The first `cut` answers for `cut_path` stop after `cut_after` bytes of
    /// body and close the connection.
    pub fn start(root: PathBuf, cut_path: &str, cut: usize, cut_after: u64) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let cuts = Arc::new(Mutex::new(cut));
        let (l2, cut_path) = (log.clone(), cut_path.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, log, cuts, cut_path) =
                    (root.clone(), l2.clone(), cuts.clone(), cut_path.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &log, &cuts, &cut_path, cut_after);
                });
            }
        });
        FileServer { port, log }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

fn serve(
    mut conn: TcpStream,
    root: &std::path::Path,
    log: &Mutex<Vec<Request>>,
    cuts: &Mutex<usize>,
    cut_path: &str,
    cut_after: u64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    let path = path.to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_owned());
        }
    }
    log.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
    });
    let file = root.join(&path);
    let Ok(mut f) = std::fs::File::open(&file) else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    };
    let len = f.metadata()?.len();
    let start = range
        .as_deref()
        .and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<u64>()
                .ok()
        })
        .filter(|s| *s <= len);
    let from = start.unwrap_or(0);
    let head = match start {
        Some(s) => format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {s}-{}/{len}\r\nconnection: close\r\n\r\n",
            len - s,
            len.saturating_sub(1)
        ),
        None => format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"),
    };
    conn.write_all(head.as_bytes())?;
    let limit = {
        let mut left = cuts.lock().unwrap();
        if path == cut_path && *left > 0 {
            *left -= 1;
            cut_after
        } else {
            u64::MAX
        }
    };
    f.seek(SeekFrom::Start(from))?;
    let mut body = f.take(limit);
    std::io::copy(&mut body, &mut conn)?;
    // Closing early is the "dropped connection": fewer bytes than content-length said.
    conn.shutdown(std::net::Shutdown::Both)
}
