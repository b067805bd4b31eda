//! `runner list` and `runner check`: the project's configuration, shown or validated.

use std::path::Path;

use crate::config::{Builder, Project};
use crate::error::Result;

/// `runner list`: targets with their builder and script, then every builder.
pub fn list(project_root: &Path) -> Result<i32> {
    let project = Project::load(project_root)?;
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
    for b in Builder::all(project_root)? {
        let [backend, image, arch, vcpus, memory] = b.summary();
        println!(
            "{:<24} {:<8} {:<10} {:<6} {:>5} {:>7}",
            b.name, backend, image, arch, vcpus, memory
        );
    }
    Ok(0)
}

/// `runner check`: loads and validates everything, starts nothing.
pub fn check(project_root: &Path) -> Result<i32> {
    let builders = Builder::all(project_root)?;
    let project = Project::load(project_root)?;
    println!(
        "ok: {} target(s), {} builder(s) in {}",
        project.targets.len(),
        builders.len(),
        project_root.display()
    );
    Ok(0)
}
