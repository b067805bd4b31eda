//! The machines this process is running, so that a second Ctrl-C can kill them all at once
//! without waiting for the tasks that own them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

struct Live {
    pgid: Option<i32>,
    dir: PathBuf,
}

static LIVE: Mutex<Option<HashMap<String, Live>>> = Mutex::new(None);

pub fn register(id: &str, pgid: Option<i32>, dir: PathBuf) {
    LIVE.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id.to_owned(), Live { pgid, dir });
}

pub fn unregister(id: &str) {
    if let Some(map) = LIVE.lock().unwrap().as_mut() {
        map.remove(id);
    }
}

/// Kills every registered machine's process group and removes its directory.
pub fn kill_all() {
    let live = LIVE.lock().unwrap().take().unwrap_or_default();
    for (_, m) in live {
        if let Some(pgid) = m.pgid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&m.dir);
    }
}

pub fn count() -> usize {
    LIVE.lock().unwrap().as_ref().map_or(0, HashMap::len)
}
