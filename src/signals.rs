//! Ctrl-C and SIGTERM, nextest-style: the first signal cancels gracefully (every machine is
//! torn down in order); a second one forces: every machine the run's registry knows is
//! killed now, and the process exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::machine::Registry;

#[derive(Clone)]
pub struct Shutdown {
    pub token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Shutdown {
    /// A token no signal will cancel (for tests and library callers).
    pub fn never() -> Shutdown {
        Shutdown {
            token: CancellationToken::new(),
            signal: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Starts listening; must be called inside the runtime. `machines` is what a second
    /// signal kills.
    pub fn install(machines: Arc<Registry>) -> std::io::Result<Shutdown> {
        let me = Shutdown::never();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (token, sig) = (me.token.clone(), me.signal.clone());
        tokio::spawn(async move {
            loop {
                let n = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                };
                if sig.swap(n, Ordering::SeqCst) == 0 {
                    crate::stopping::ask();
                    eprintln!(
                        "runner: received {}, tearing down (send it again to force)",
                        name(n)
                    );
                    token.cancel();
                } else {
                    eprintln!(
                        "runner: forced exit, killing {} machine(s)",
                        machines.count()
                    );
                    machines.kill_all();
                    std::process::exit(128 + n);
                }
            }
        });
        Ok(me)
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The shell convention for "ended by signal N": 128 + N.
    pub fn exit_code(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Some(128 + n),
        }
    }
}

fn name(sig: i32) -> &'static str {
    if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
