//! `runner gc`: gathers what every subsystem's sweeper found a dead runner left behind,
//! prints it and, with `--force`, asks each finding to remove itself. A dry run by default,
//! because removing kills processes and terminates instances.

use super::{Env, Exit, print_json};
use crate::config::Builder;
use crate::error::{Result, chain};
use crate::leftovers::Finding;
use crate::progress::Format;

#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    /// Found, and removal was tried but failed (e.g. the S3 store is unreachable), or the
    /// search itself failed.
    pub failed: Vec<String>,
    pub would_remove: Vec<String>,
    pub in_use: Vec<String>,
}

/// The project's builders name the EC2 regions and endpoints to scan, besides those in
/// local records.
pub async fn sweep(env: &Env, force: bool) -> Report {
    let builders = Builder::all(&env.project).unwrap_or_default();
    let mut sweepers = env.machines.sweepers(&builders);
    sweepers.extend(crate::store::sweepers(&env.dirs));
    sweepers.push(Box::new(crate::context::pack::PackSweeper {
        cache: env.dirs.cache.clone(),
    }));
    // The S3 stores' staging root, and the local store's (the project's artifact directory).
    let mut roots = vec![env.dirs.state.join("staging")];
    roots.extend(
        crate::config::Project::load(&env.project)
            .ok()
            .map(|p| p.artifact_dir),
    );
    sweepers.push(Box::new(crate::store::StagingSweeper { roots }));
    sweepers.push(Box::new(crate::cache::list::PartSweeper {
        caches: crate::cache::Caches::new(&env.dirs.cache),
    }));
    let mut report = Report::default();
    for sweeper in sweepers {
        for finding in sweeper.find().await {
            let leftover = match finding {
                Finding::Failed(why) => {
                    report.failed.push(why);
                    continue;
                }
                Finding::Found(l) => l,
            };
            if leftover.in_use {
                report.in_use.push(leftover.what);
            } else if !force {
                report.would_remove.push(leftover.what);
            } else {
                let what = leftover.what.clone();
                match leftover.remove().await {
                    Ok(detail) => report.removed.push(format!("{what}{detail}")),
                    Err(e) => report.failed.push(format!("{what}: {}", chain(&e))),
                }
            }
        }
    }
    report
}

pub async fn gc(env: &Env, force: bool) -> Result<Exit> {
    let r = sweep(env, force).await;
    if env.format == Format::Json {
        print_json(serde_json::json!({
            "dry_run": !force,
            "in_use": r.in_use,
            "removed": r.removed,
            "orphans": r.would_remove,
            "failed": r.failed,
        }));
        return Ok(Exit::of(r.failed.is_empty()));
    }
    for w in &r.in_use {
        println!("keep    {w}");
    }
    for w in &r.removed {
        println!("removed {w}");
    }
    for w in &r.would_remove {
        println!("orphan  {w}");
    }
    for w in &r.failed {
        println!("failed  {w}");
    }
    if !r.would_remove.is_empty() {
        println!(
            "dry run: pass --force to remove {} item(s)",
            r.would_remove.len()
        );
    }
    Ok(Exit::of(r.failed.is_empty()))
}
