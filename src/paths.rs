//! Where runner keeps things on the host: the image cache (large, reproducible, safe to
//! delete) and the state directory (small, describes live machines, read by `runner gc`).

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Dirs {
    /// Baked base images, keyed by recipe digest.
    pub cache: PathBuf,
    /// One directory per live machine: overlay, seed, sockets, console log, record.
    pub state: PathBuf,
}

impl Dirs {
    /// Flags win over `RUNNER_CACHE_DIR`/`RUNNER_STATE_DIR` (clap reads those), which win over
    /// the XDG defaults.
    pub fn resolve(cache: Option<PathBuf>, state: Option<PathBuf>) -> Dirs {
        let home = || dirs::home_dir().unwrap_or_else(|| PathBuf::from("/tmp"));
        Dirs {
            cache: cache.unwrap_or_else(|| {
                dirs::cache_dir()
                    .unwrap_or_else(|| home().join(".cache"))
                    .join("runner")
            }),
            state: state.unwrap_or_else(|| {
                dirs::state_dir()
                    .unwrap_or_else(|| home().join(".local/state"))
                    .join("runner")
            }),
        }
    }

    pub fn images(&self) -> PathBuf {
        self.cache.join("images")
    }

    pub fn machines(&self) -> PathBuf {
        self.state.join("machines")
    }

    /// One record per S3 publish in flight, so `runner gc` can clean up after a runner that
    /// died (or lost the server) mid-upload.
    pub fn uploads(&self) -> PathBuf {
        self.state.join("uploads")
    }

    /// Console logs outlive their machines, for post-mortems.
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
}
