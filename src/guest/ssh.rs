//! SSH sessions to guests, with the host key pinned to the one runner generated.
//!
//! Keepalives and an inactivity timeout are always set: without them a VM that dies mid-command
//! leaves the client waiting forever (russh defaults to neither).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::PrivateKeyWithHashAlg;
use russh::keys::ssh_key::PublicKey;
use russh::{ChannelMsg, Disconnect, client};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::capped::{Capped, OUTPUT_CAP, STDERR_CAP};
use super::keys::{GuestKeys, fingerprint};
use crate::error::{Error, Result};

/// How to reach a machine over SSH.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// A booting machine, as [`wait_ready`] sees it.
pub struct Booting<'a> {
    /// For messages: `bookworm-amd64 (machine 3f2a9c1e)`.
    pub name: String,
    pub endpoint: &'a Endpoint,
    pub boot_timeout: Duration,
    pub console: &'a std::path::Path,
}

/// What the machine's own signals say while it boots.
pub enum Probe {
    /// It stopped by itself: how.
    Exited(String),
    /// Its sshd has not said it listens yet; a handshake now would only stall.
    NotYet,
    /// Worth a handshake.
    Ready,
    /// It never will be: its firmware found nothing to boot (why, and what to set).
    Stuck(String),
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal(String),
    /// The channel closed without reporting a status (e.g. the guest went away).
    Lost,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The status as a process exit code, shell-style: 128+n is not knowable for a
    /// signal name, so signals and lost channels map to 255.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Code(c) => (*c).min(255) as i32,
            _ => 255,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Lost => write!(f, "connection lost before an exit status"),
        }
    }
}

/// How a remote command ended, and whether something it left running still held its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub status: ExitStatus,
    pub leaked: bool,
}

/// The handler accepts exactly one host key and remembers what it was shown.
struct Pinned {
    expected: PublicKey,
    presented: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        *self.presented.lock().unwrap() = Some(key.clone());
        Ok(key.key_data() == self.expected.key_data())
    }
}

pub struct Session {
    handle: client::Handle<Pinned>,
    /// Logged in as someone other than root: the guest contract runs through `sudo`.
    sudo: bool,
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        // The client's receive window cannot grow after the channel opens (russh#770),
        // so start large enough that artifact downloads are not window-bound.
        window_size: 32 << 20,
        nodelay: true,
        // A guest that stops answering for a minute is gone; shorter silences happen to an
        // emulated (TCG) guest on a busy host during heavy IO (with 20 s, a `docker run`
        // beside another TCG guest once lost its connection).
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 12,
        inactivity_timeout: Some(Duration::from_secs(90)),
        ..Default::default()
    })
}

/// Connects once. A host key mismatch is reported as such (never retried by callers).
pub async fn connect(
    endpoint: &Endpoint,
    client_key: &russh::keys::PrivateKey,
    pinned_host: &PublicKey,
    machine: &str,
) -> Result<Session> {
    let presented = Arc::new(Mutex::new(None));
    let handler = Pinned {
        expected: pinned_host.clone(),
        presented: presented.clone(),
    };
    let addr = (endpoint.host.as_str(), endpoint.port);
    let mut handle = match client::connect(config(), addr, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(got) = presented.lock().unwrap().take()
                && got.key_data() != pinned_host.key_data()
            {
                return Err(Error::HostKeyMismatch {
                    machine: machine.to_owned(),
                    expected: fingerprint(pinned_host),
                    presented: fingerprint(&got),
                });
            }
            return Err(ssh_err(format!("cannot connect to {machine}"), e));
        }
    };
    let key = PrivateKeyWithHashAlg::new(Arc::new(client_key.clone()), None);
    let auth = handle
        .authenticate_publickey(endpoint.user.clone(), key)
        .await
        .map_err(|e| ssh_err(format!("cannot authenticate to {machine}"), e))?;
    if !auth.success() {
        return Err(Error::HostRefusedKey {
            machine: machine.to_owned(),
            user: endpoint.user.clone(),
        });
    }
    Ok(Session {
        handle,
        sudo: endpoint.user != "root",
    })
}

/// Connects, retrying while the guest boots, until the boot timeout. Gives up early if the
/// machine stops (`probe` says so) or presents the wrong host key.
pub async fn wait_ready(
    m: Booting<'_>,
    keys: &GuestKeys,
    mut probe: impl FnMut() -> Probe,
) -> Result<Session> {
    let deadline = Instant::now() + m.boot_timeout;
    loop {
        match probe() {
            Probe::Exited(status) => {
                return Err(Error::MachineDied {
                    machine: m.name,
                    status: format!("exited during boot ({status})"),
                    console: m.console.to_owned(),
                    tail: crate::logs::tail(m.console, 20),
                });
            }
            Probe::Stuck(why) => {
                return Err(Error::NeverBooted {
                    machine: m.name,
                    why,
                    console: m.console.to_owned(),
                });
            }
            Probe::NotYet | Probe::Ready if Instant::now() >= deadline => {
                return Err(Error::BootTimeout {
                    machine: m.name,
                    secs: m.boot_timeout.as_secs(),
                    console: m.console.to_owned(),
                    reached: String::new(),
                });
            }
            Probe::NotYet => {
                // A probe reads the console runner already holds: polling it often costs
                // nothing, and a warm machine is ready a second after it started.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Probe::Ready => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // QEMU's port forward accepts TCP before the guest listens, so only a full
        // handshake tells readiness; bound each attempt so a stuck one cannot eat the budget.
        let attempt = tokio::time::timeout(
            left.min(Duration::from_secs(20)),
            connect(m.endpoint, &keys.client, keys.host_public(), &m.name),
        )
        .await;
        match attempt {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(e @ Error::HostKeyMismatch { .. })) => return Err(e),
            Ok(Err(e)) => tracing::debug!("{} not ready: {e}", m.name),
            Err(_) => tracing::debug!("{}: SSH attempt timed out", m.name),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Session {
    /// Runs `command` (a shell command line), feeding `stdin` and streaming stdout/stderr
    /// as they arrive. Returns once the channel has closed, not at the exit status: output
    /// can still follow it.
    pub async fn exec<I, O, E>(
        &self,
        command: &str,
        stdin: Option<I>,
        stdout: O,
        stderr: E,
    ) -> Result<ExitStatus>
    where
        I: AsyncRead + Unpin + Send + 'static,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let ended = self.exec_with(command, stdin, stdout, stderr, None).await?;
        Ok(ended.status)
    }

    /// [`Session::exec`], but once the exit status has arrived, waits at most `leak` for the
    /// channel to end: a background process the command left behind (a daemon started with
    /// `&`) may hold its output open for ever. The status decides; `leaked` says it happened.
    pub async fn exec_with<I, O, E>(
        &self,
        command: &str,
        stdin: Option<I>,
        mut stdout: O,
        mut stderr: E,
        leak: Option<Duration>,
    ) -> Result<Ended>
    where
        I: AsyncRead + Unpin + Send + 'static,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| ssh_err("cannot open an SSH channel".into(), e))?;
        // The contract's commands need root (mounts, /build); a cloud image's login user gets
        // it through passwordless sudo, which runner's user data grants it. `-n`: never
        // prompt, fail instead.
        let command = match self.sudo {
            true => format!("sudo -n -- sh -c {}", super::quote(command)),
            false => command.to_owned(),
        };
        channel
            .exec(true, command)
            .await
            .map_err(|e| ssh_err("cannot start the remote command".into(), e))?;
        let (mut rx, tx) = channel.split();
        let tx = Arc::new(tx);
        let feeding = tx.clone();
        let feeder = tokio::spawn(async move {
            if let Some(input) = stdin {
                feeding.data(input).await?;
            }
            feeding.eof().await
        });
        let mut ended = Ended {
            status: ExitStatus::Lost,
            leaked: false,
        };
        let mut deadline = None;
        loop {
            let msg = match deadline {
                None => rx.wait().await,
                Some(d) => match tokio::time::timeout_at(d, rx.wait()).await {
                    Ok(m) => m,
                    Err(_) => {
                        ended.leaked = true;
                        let _ = tx.close().await;
                        break;
                    }
                },
            };
            let Some(msg) = msg else { break };
            if let Err(e) = take(msg, &mut stdout, &mut stderr, &mut ended.status).await {
                // A sink that refuses more (a cap passed) ends the command here: closing the
                // channel stops the guest's sending, where returning alone would leave it
                // streaming into the connection.
                let _ = tx.close().await;
                feeder.abort();
                return Err(e);
            }
            if ended.status != ExitStatus::Lost && deadline.is_none() {
                deadline = leak.map(|l| tokio::time::Instant::now() + l);
            }
        }
        stdout.flush().await.ok();
        stderr.flush().await.ok();
        // The remote side may exit without reading all of stdin; that is not our error.
        feeder.abort();
        Ok(ended)
    }

    /// Runs a command and returns its stdout (at most [`OUTPUT_CAP`] bytes of it), failing
    /// on a non-zero status.
    pub async fn output(&self, command: &str) -> Result<Vec<u8>> {
        self.output_within(command, OUTPUT_CAP).await
    }

    /// [`Session::output`] with a cap of `cap` bytes on stdout (stderr: [`STDERR_CAP`]). The
    /// guest decides how much it sends, so past a cap runner stops reading and fails: it
    /// never holds more than the cap.
    pub async fn output_within(&self, command: &str, cap: u64) -> Result<Vec<u8>> {
        let mut out = Capped::new(cap);
        let mut err = Capped::new(STDERR_CAP);
        let ended = self
            .exec(command, None::<tokio::io::Empty>, &mut out, &mut err)
            .await;
        for (sink, stream) in [(&out, "stdout"), (&err, "stderr")] {
            if sink.over {
                return Err(Error::OutputTooLarge {
                    command: command.to_owned(),
                    stream,
                    cap: sink.cap,
                });
            }
        }
        let status = ended?;
        if !status.success() {
            return Err(Error::Guest {
                what: format!("`{command}`"),
                status: format!("{status}: {}", String::from_utf8_lossy(&err.buf).trim()),
            });
        }
        Ok(out.buf)
    }

    /// Says goodbye, but never waits long for a guest that may already be gone.
    pub async fn close(self) {
        let bye = self.handle.disconnect(Disconnect::ByApplication, "", "en");
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }
}

/// Writes one message's output to its stream, or notes the status it carries.
async fn take<O, E>(
    msg: ChannelMsg,
    stdout: &mut O,
    stderr: &mut E,
    status: &mut ExitStatus,
) -> Result<()>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    match msg {
        ChannelMsg::Data { data } => write_out(stdout, &data).await?,
        ChannelMsg::ExtendedData { data, ext: 1 } => write_out(stderr, &data).await?,
        ChannelMsg::ExitStatus { exit_status } => *status = ExitStatus::Code(exit_status),
        ChannelMsg::ExitSignal { signal_name, .. } => {
            *status = ExitStatus::Signal(format!("{signal_name:?}"))
        }
        _ => {}
    }
    Ok(())
}

async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<()> {
    w.write_all(data).await.map_err(|source| Error::Io {
        context: "cannot write remote command output".into(),
        source,
    })
}

fn ssh_err(context: String, source: russh::Error) -> Error {
    Error::Ssh { context, source }
}
