//! The machines of one run, so that a second Ctrl-C can kill them all at once without
//! waiting for the tasks that own them, and the teardowns that had to leave their task
//! (from `Drop`) are joined before the process exits. One per run, shared by its backends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::JoinHandle;

type Kill = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Kill>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Registry {
    /// `kill` must stop the machine now and remove what it left on the host, synchronously.
    pub fn register(&self, id: &str, kill: impl Fn() + Send + Sync + 'static) {
        self.live
            .lock()
            .unwrap()
            .insert(id.to_owned(), Box::new(kill));
    }

    pub fn unregister(&self, id: &str) {
        self.live.lock().unwrap().remove(id);
    }

    /// The forced exit path: kills every registered machine. Machines that cannot be killed
    /// from here (cloud instances) are left to their dead-man switch and `runner gc`.
    pub fn kill_all(&self) -> usize {
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        let n = live.len();
        for kill in live.values() {
            kill();
        }
        n
    }

    pub fn count(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Runs a teardown on a thread of its own (from `Drop`, where no runtime can be
    /// borrowed); [`Registry::join`] waits for it.
    pub fn spawn_teardown(&self, f: impl FnOnce() + Send + 'static) {
        let handle = std::thread::spawn(f);
        self.background.lock().unwrap().push(handle);
    }

    /// Waits for every teardown started with [`Registry::spawn_teardown`].
    pub fn join(&self) {
        let pending = std::mem::take(&mut *self.background.lock().unwrap());
        if !pending.is_empty() {
            eprintln!("runner: waiting for {} machine teardown(s)", pending.len());
        }
        for h in pending {
            let _ = h.join();
        }
    }
}
