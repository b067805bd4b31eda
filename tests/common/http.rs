//! A loopback HTTP/1.1 file server for download tests: serves files from a directory with
//! range requests and a strong ETag, logs every request, and misbehaves on demand the way a
//! hostile or broken server does: breaks off its first answers part-way (a dropped
//! connection), redirects, trickles, or answers a range request with the wrong range.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request: the path and its `Range` and `If-Range` headers, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

/// How the server misbehaves, per path.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The first `cut` answers for `cut_path` stop after `cut_after` bytes of body.
    pub cut_path: String,
    pub cut: usize,
    pub cut_after: u64,
    /// `(path, location)`: answered `302 Found` to `location`.
    pub redirects: Vec<(String, String)>,
    /// `(path, pause)`: the body is sent one byte per `pause`.
    pub trickle: Option<(String, Duration)>,
    /// A range request for this path is answered 206 from half the offset it asked for.
    pub wrong_range: Option<String>,
}

/// The ETag every file is served with.
pub const ETAG: &str = "\"runner-test-v1\"";

pub struct FileServer {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Request>>>,
}

impl FileServer {
    /// Serves `root`. The first `cut` answers for `cut_path` stop after `cut_after` bytes of
    /// body and close the connection.
    pub fn start(root: PathBuf, cut_path: &str, cut: usize, cut_after: u64) -> FileServer {
        FileServer::with(
            root,
            Faults {
                cut_path: cut_path.to_owned(),
                cut,
                cut_after,
                ..Faults::default()
            },
        )
    }

    pub fn with(root: PathBuf, faults: Faults) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let cuts = Arc::new(Mutex::new(faults.cut));
        let (l2, faults) = (log.clone(), Arc::new(faults));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, log, cuts, faults) =
                    (root.clone(), l2.clone(), cuts.clone(), faults.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &log, &cuts, &faults);
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

fn read_request(conn: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = Some(v.trim().to_owned());
            match k.to_ascii_lowercase().as_str() {
                "range" => range = v,
                "if-range" => if_range = v,
                _ => {}
            }
        }
    }
    Ok(Request {
        path,
        range,
        if_range,
    })
}

fn serve(
    mut conn: TcpStream,
    root: &std::path::Path,
    log: &Mutex<Vec<Request>>,
    cuts: &Mutex<usize>,
    faults: &Faults,
) -> std::io::Result<()> {
    let req = read_request(&conn)?;
    log.lock().unwrap().push(req.clone());
    let path = req.path.as_str();
    if let Some((_, to)) = faults.redirects.iter().find(|(p, _)| p == path) {
        let head = format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n");
        return conn.write_all(head.as_bytes());
    }
    let Ok(mut f) = std::fs::File::open(root.join(path)) else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    };
    let len = f.metadata()?.len();
    let asked = req
        .range
        .as_deref()
        .and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<u64>()
                .ok()
        })
        .filter(|s| *s <= len);
    // An If-Range with another validator means "send it whole".
    let asked = asked.filter(|_| req.if_range.as_deref().is_none_or(|v| v == ETAG));
    let start = match asked {
        Some(s) if faults.wrong_range.as_deref() == Some(path) => Some(s / 2),
        a => a,
    };
    let from = start.unwrap_or(0);
    let head = match start {
        Some(s) => format!(
            "HTTP/1.1 206 Partial Content\r\netag: {ETAG}\r\ncontent-length: {}\r\ncontent-range: bytes {s}-{}/{len}\r\nconnection: close\r\n\r\n",
            len - s,
            len.saturating_sub(1)
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\netag: {ETAG}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        ),
    };
    conn.write_all(head.as_bytes())?;
    let limit = {
        let mut left = cuts.lock().unwrap();
        if path == faults.cut_path && *left > 0 {
            *left -= 1;
            faults.cut_after
        } else {
            u64::MAX
        }
    };
    f.seek(SeekFrom::Start(from))?;
    let mut body = f.take(limit);
    match &faults.trickle {
        Some((p, pause)) if p == path => {
            let mut byte = [0u8; 1];
            while body.read(&mut byte)? == 1 {
                conn.write_all(&byte)?;
                std::thread::sleep(*pause);
            }
        }
        _ => {
            std::io::copy(&mut body, &mut conn)?;
        }
    }
    // Closing early is the "dropped connection": fewer bytes than content-length said.
    conn.shutdown(std::net::Shutdown::Both)
}
