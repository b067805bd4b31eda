//! A machine taken away from outside runner — a cloud reclaiming a spot instance, someone
//! terminating it — as its backend noticed (the instance's state, not a lost connection),
//! so the run can stop waiting on it and start the target again on a fresh machine.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug)]
pub struct Lost {
    token: CancellationToken,
    why: Arc<OnceLock<String>>,
}

impl Lost {
    /// The first account is kept; later ones change nothing.
    pub fn mark(&self, why: String) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    pub fn why(&self) -> Option<&str> {
        self.why.get().map(String::as_str)
    }

    /// Resolves once the machine was taken away (never, for a machine that is not).
    pub async fn wait(&self) -> String {
        self.token.cancelled().await;
        self.why().unwrap_or_default().to_owned()
    }
}
