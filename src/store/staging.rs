//! Where a target's artifacts wait between collect and publish: a hidden directory per
//! target, named after the runner that made it, so that `runner gc` removes what a runner
//! killed mid-collect or mid-publish left.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::Result;

/// A fresh hidden staging directory under `root` (for the local store: beside the published
/// directories, on the same filesystem, so publishing is a rename). Its name holds its
/// runner's pid and start time, so `runner gc` can tell one a killed runner left
/// ([`StagingSweeper`]).
pub fn staging_in(root: &std::path::Path, target: &str) -> Result<tempfile::TempDir> {
    use crate::error::IoContext;
    std::fs::create_dir_all(root).ctx(|| format!("cannot create `{}`", root.display()))?;
    let me = crate::host::Owner::me();
    tempfile::Builder::new()
        .prefix(&format!(".staging-{target}-p{}s{}-", me.pid, me.start))
        .tempdir_in(root)
        .ctx(|| format!("cannot create a staging directory in `{}`", root.display()))
}

/// Staging directories whose runner is gone (killed while collecting or publishing), in
/// each of `roots`: the S3 stores' staging root and the project's artifact directory.
pub struct StagingSweeper {
    pub roots: Vec<PathBuf>,
}

#[async_trait]
impl crate::leftovers::Sweeper for StagingSweeper {
    async fn find(&self) -> Vec<crate::leftovers::Finding> {
        use crate::leftovers::{Finding, Leftover};
        let mut found = vec![];
        for root in &self.roots {
            let entries = std::fs::read_dir(root).into_iter().flatten();
            for path in entries.filter_map(|e| Some(e.ok()?.path())) {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let Some(owner) = staging_owner(&name) else {
                    continue;
                };
                found.push(Finding::Found(if owner.alive() {
                    Leftover::in_use(format!("staging directory {}", path.display()))
                } else {
                    Leftover::path("staging directory", path)
                }));
            }
        }
        found
    }
}

/// The runner a staging directory's name says made it: `.staging-<target>-p<pid>s<start>-<x>`.
fn staging_owner(name: &str) -> Option<crate::host::Owner> {
    let rest = name.strip_prefix(".staging-")?;
    let (rest, _random) = rest.rsplit_once('-')?;
    let (_target, owner) = rest.rsplit_once('-')?;
    let (pid, start) = owner.strip_prefix('p')?.split_once('s')?;
    Some(crate::host::Owner {
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_staging_directory_names_its_runner() {
        let o = super::staging_owner(".staging-my-target-p42s1234-AbC123").unwrap();
        assert_eq!((o.pid, o.start), (42, 1234));
        for other in [".staging-t-AbC123", "t", ".staging-t-pxs1-A", ".staging-"] {
            assert!(super::staging_owner(other).is_none(), "{other}");
        }
    }
}
