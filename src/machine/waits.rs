//! How a launch that has to wait (a cloud's quota, capacity or throttling) tells the run
//! why: the run turns it into a `waiting` event; without a run it goes to the log.

use std::sync::Arc;
use std::time::Duration;

/// Told why a launch waits, and how long until its next try.
#[derive(Clone)]
pub struct Waits(pub Arc<Tell>);

/// Why, and how long until the next try.
pub type Tell = dyn Fn(&str, Duration) + Send + Sync;

impl Waits {
    pub fn tell(&self, why: &str, retry_in: Duration) {
        (self.0)(why, retry_in)
    }
}

/// Without a run to tell: the log, at info.
impl Default for Waits {
    fn default() -> Waits {
        Waits(Arc::new(|why, retry_in| {
            tracing::info!("waiting: {why} (next try in {retry_in:?})")
        }))
    }
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waits")
    }
}
