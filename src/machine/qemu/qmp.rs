//! A minimal QMP client: JSON lines over QEMU's unix socket. Hand-written because the schema
//! crates lag current QEMU, and runner needs only the handshake and a couple of commands.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, IoContext, Result};

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(socket: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .await
            .ctx(|| format!("cannot connect to QMP socket `{}`", socket.display()))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error(format!("unexpected greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Sends a command and waits for its reply, skipping asynchronous events.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .ctx(|| format!("cannot send QMP command `{command}`"))?;
        loop {
            let reply = self.read_message().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(qmp_error(format!("`{command}` failed: {err}")));
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .map_err(|_| qmp_error("no answer within 10s".into()))?
            .ctx(|| "cannot read from QMP")?;
        if n == 0 {
            return Err(qmp_error("the connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Qmp {
            problem: "a message that is not JSON".into(),
            source: Some(Box::new(e)),
        })
    }
}

fn qmp_error(problem: String) -> Error {
    Error::Qmp {
        problem,
        source: None,
    }
}
