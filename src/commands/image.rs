//! `runner image build|list|rm`: base images, prepared ahead of builds, listed, removed.

use super::{Env, Exit, print_json};
use crate::config::Builder;
use crate::error::Result;
use crate::machine::Report;
use crate::progress::Format;

pub async fn build(env: &Env, names: &[String]) -> Result<Exit> {
    // Validate every builder before baking any: a typo should not cost a bake first.
    let builders = names
        .iter()
        .map(|n| Builder::find(&env.project, n))
        .collect::<Result<Vec<_>, _>>()?;
    let report = match (env.quiet, env.interactive) {
        (true, _) => Report::To(std::sync::Arc::new(|_, _| {})),
        (_, true) => Report::Spinner,
        _ => Report::Lines,
    };
    for b in &builders {
        let started = std::time::Instant::now();
        let backend = env.machines.backend(b);
        let prepared = env.cancellable(backend.prepare(&report)).await?;
        println!(
            "{}\t{}\t{} in {:.1}s\t{}",
            b.name,
            &prepared.base_image[..16.min(prepared.base_image.len())],
            if prepared.fresh { "baked" } else { "cached" },
            started.elapsed().as_secs_f64(),
            prepared.location
        );
    }
    Ok(Exit::Success)
}

pub fn list(env: &Env) -> Result<Exit> {
    let images = env.machines.cached_images();
    if env.format == Format::Json {
        let list: Vec<_> = images
            .iter()
            .map(|i| {
                let snapshots: Vec<_> = i
                    .snapshots
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id, "bytes": s.bytes, "for": s.describe}))
                    .collect();
                serde_json::json!({"builder": i.builder, "digest": i.digest, "bytes": i.bytes,
                                   "created_unix": i.created_unix, "image": i.describe,
                                   "snapshots": snapshots})
            })
            .collect();
        print_json(serde_json::json!({ "images": list }));
        return Ok(Exit::Success);
    }
    println!(
        "{:<24} {:<16} {:>10} {:>8}  IMAGE",
        "BUILDER", "DIGEST", "SIZE", "AGE"
    );
    let now = crate::host::now_unix();
    for i in images {
        let age = humantime::format_duration(std::time::Duration::from_secs(
            now.saturating_sub(i.created_unix) / 60 * 60,
        ))
        .to_string();
        println!(
            "{:<24} {:<16} {:>9}M {:>8}  {}",
            i.builder,
            &i.digest[..16.min(i.digest.len())],
            i.bytes >> 20,
            if age.is_empty() { "0m".into() } else { age },
            i.describe
        );
        for s in &i.snapshots {
            println!(
                "  snapshot {:<16} {:>9}M           {}",
                s.id,
                s.bytes >> 20,
                s.describe
            );
        }
    }
    Ok(Exit::Success)
}

pub async fn rm(env: &Env, what: &[String]) -> Result<Exit> {
    let mut code = Exit::Success;
    for w in what {
        let removed = env.machines.remove_cached(w).await?;
        if removed.is_empty() {
            eprintln!("runner: no cached image or snapshot matches `{w}`");
            code = Exit::Failed;
        }
        for i in removed {
            let digest = &i.digest[..16.min(i.digest.len())];
            if i.snapshots.is_empty() {
                println!("removed {} {digest}", i.builder);
            }
            for s in &i.snapshots {
                println!("removed snapshot {} of {} {digest}", s.id, i.builder);
            }
        }
    }
    Ok(code)
}
