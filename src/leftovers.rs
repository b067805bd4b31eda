//! What a runner that died (or lost a server) can leave behind, and how each subsystem finds
//! and removes its own: QEMU machines, EC2 instances and groups, unfinished S3 uploads, bake
//! scratch directories. `runner gc` only gathers what every [`Sweeper`] found, prints it and,
//! when told to, asks each finding to remove itself.

use std::pin::Pin;

use async_trait::async_trait;

use crate::error::Result;

type Removal = Pin<Box<dyn Future<Output = Result<String>> + Send>>;

/// One thing found. Its removal is prepared when it is found, and runs only if asked.
pub struct Leftover {
    pub what: String,
    /// Still owned by a live runner: listed, never removed.
    pub in_use: bool,
    remove: Option<Removal>,
}

impl Leftover {
    /// Something nobody owns any more; `remove` resolves to a note on what it did ("" for
    /// nothing to add).
    pub fn orphan(
        what: String,
        remove: impl Future<Output = Result<String>> + Send + 'static,
    ) -> Leftover {
        Leftover {
            what,
            in_use: false,
            remove: Some(Box::pin(remove)),
        }
    }

    /// A file or directory nobody owns, removed whole: `<what> <path>`.
    pub fn path(what: &str, path: std::path::PathBuf) -> Leftover {
        let shown = format!("{what} {}", path.display());
        Leftover::orphan(shown, async move {
            let _ = match path.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            Ok(String::new())
        })
    }

    pub fn in_use(what: String) -> Leftover {
        Leftover {
            what,
            in_use: true,
            remove: None,
        }
    }

    /// Removes it; a no-op for what is in use.
    pub async fn remove(self) -> Result<String> {
        match self.remove {
            Some(f) => f.await,
            None => Ok(String::new()),
        }
    }
}

/// What one sweeper reports: a finding, or a problem that kept it from looking (a record it
/// cannot read, a cloud it cannot reach).
pub enum Finding {
    Found(Leftover),
    Failed(String),
}

#[async_trait]
pub trait Sweeper: Send + Sync {
    /// Looks; removes nothing.
    async fn find(&self) -> Vec<Finding>;
}
