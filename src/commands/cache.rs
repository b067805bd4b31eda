//! `runner cache ls|rm`: the build caches on this host (see [`crate::cache`]).

use super::{Env, Exit, print_json};
use crate::cache::Caches;
use crate::error::Result;
use crate::progress::Format;

pub fn ls(env: &Env) -> Result<Exit> {
    let entries = Caches::new(&env.dirs.cache).list();
    if env.format == Format::Json {
        print_json(serde_json::json!({ "caches": entries }));
        return Ok(Exit::Success);
    }
    if entries.is_empty() {
        println!("no build caches (a target declares them with cache = [...])");
    }
    for e in &entries {
        let newest = e
            .generations
            .last()
            .map_or("none".into(), |(n, _)| n.to_string());
        println!(
            "{:<40} generation {:<6} {:>9.1}M{}",
            e.key,
            newest,
            e.bytes as f64 / f64::from(1 << 20),
            if e.in_use { "  (in use)" } else { "" }
        );
        if let Some(a) = &e.about {
            let whose = if a.shared { "cache_key" } else { "target" };
            println!(
                "  {whose} {} of {}: {}",
                a.name,
                a.project,
                a.paths.join(" ")
            );
        }
    }
    Ok(Exit::Success)
}

pub fn rm(env: &Env, what: &[String]) -> Result<Exit> {
    let caches = Caches::new(&env.dirs.cache);
    let project = std::fs::canonicalize(&env.project).unwrap_or_else(|_| env.project.clone());
    let mut code = Exit::Success;
    for w in what {
        match caches.remove(w, &project) {
            Ok(keys) => keys.iter().for_each(|k| println!("removed {k}")),
            Err(e) => {
                eprintln!("runner: {e}");
                code = Exit::Failed;
            }
        }
    }
    Ok(code)
}
