//! `runner list` and `runner check`: the project's configuration, shown or validated.

use serde_json::json;

use super::{Env, Exit, print_json};
use crate::config::{Builder, Project};
use crate::error::Result;
use crate::progress::Format;

/// `runner list`: targets with their builder and script, then every builder.
pub fn list(env: &Env) -> Result<Exit> {
    let project = Project::load(&env.project)?;
    let builders = Builder::all(&env.project)?;
    if env.format == Format::Json {
        let targets: Vec<_> = project
            .targets
            .values()
            .map(|t| {
                json!({
                    "name": t.name,
                    "builder": t.builder.name,
                    "script": t.script,
                    "context": t.context,
                    "artifacts": t.artifacts,
                    "timeout_seconds": t.timeout.as_secs(),
                    "upload": t.upload,
                })
            })
            .collect();
        let builders: Vec<_> = builders
            .iter()
            .map(|b| {
                let [backend, image, arch, vcpus, memory] = b.summary();
                json!({"name": b.name, "backend": backend, "image": image, "arch": arch,
                       "vcpus": vcpus, "memory": memory})
            })
            .collect();
        print_json(json!({"targets": targets, "builders": builders}));
        return Ok(Exit::Success);
    }
    println!(
        "{:<24} {:<20} {:<32} TIMEOUT",
        "TARGET", "BUILDER", "SCRIPT"
    );
    for t in project.targets.values() {
        let script = t.script.strip_prefix(&project.root).unwrap_or(&t.script);
        println!(
            "{:<24} {:<20} {:<32} {}",
            t.name,
            t.builder.name,
            script.display(),
            humantime::format_duration(t.timeout)
        );
    }
    println!();
    println!(
        "{:<24} {:<8} {:<10} {:<6} {:>5} {:>7}",
        "BUILDER", "BACKEND", "SUITE", "ARCH", "VCPUS", "MEMORY"
    );
    for b in builders {
        let [backend, image, arch, vcpus, memory] = b.summary();
        println!(
            "{:<24} {:<8} {:<10} {:<6} {:>5} {:>7}",
            b.name, backend, image, arch, vcpus, memory
        );
    }
    Ok(Exit::Success)
}

/// `runner check`: loads and validates everything, starts nothing.
pub fn check(env: &Env) -> Result<Exit> {
    let builders = Builder::all(&env.project)?;
    let project = Project::load(&env.project)?;
    if env.format == Format::Json {
        print_json(json!({
            "ok": true,
            "project": env.project,
            "targets": project.targets.len(),
            "builders": builders.len(),
        }));
    } else if !env.quiet {
        println!(
            "ok: {} target(s), {} builder(s) in {}",
            project.targets.len(),
            builders.len(),
            env.project.display()
        );
    }
    Ok(Exit::Success)
}
