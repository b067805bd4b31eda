//! `runner artifacts ls|get`: the newest published build of a target, listed, or downloaded
//! and verified against its manifest.

use std::path::Path;

use serde_json::json;

use super::{Env, Exit, print_json};
use crate::config::{Project, S3Url};
use crate::error::{Error, IoContext, Result};
use crate::progress::Format;

/// `runner artifacts ls`: the newest published build of a target.
pub async fn ls(env: &Env, target: &str, upload: Option<&S3Url>) -> Result<Exit> {
    let project = Project::load(&env.project)?;
    let store =
        crate::run::store_of(&env.host(), &project, project.target(target)?, upload).await?;
    let found = store.latest(target).await?;
    if env.format == Format::Json {
        let build = found
            .as_ref()
            .map(|m| crate::manifest::build_id(&m.inputs_digest, m.started_unix));
        print_json(json!({"target": target, "build": build, "manifest": found}));
        return Ok(Exit::of(found.is_some()));
    }
    let Some(m) = found else {
        eprintln!("runner: no published build of `{target}`");
        return Ok(Exit::Failed);
    };
    println!(
        "{} build {} (inputs {}), finished {}",
        m.target,
        crate::manifest::build_id(&m.inputs_digest, m.started_unix),
        m.inputs_digest.short(),
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.finished_unix)
        )
    );
    for a in &m.artifacts {
        println!("{:>12}  {}  {}  {}", a.size, a.sha256, a.path, a.uri);
    }
    Ok(Exit::Success)
}

/// `runner artifacts get`: downloads the newest build's artifacts and checks each sha256
/// against its manifest; a mismatching file is removed and the command fails.
pub async fn get(env: &Env, target: &str, upload: Option<&S3Url>, out: &Path) -> Result<Exit> {
    let project = Project::load(&env.project)?;
    let store =
        crate::run::store_of(&env.host(), &project, project.target(target)?, upload).await?;
    let m = store
        .latest(target)
        .await?
        .ok_or_else(|| Error::NoPublishedBuild {
            target: target.to_owned(),
        })?;
    let mut bad = 0;
    for a in &m.artifacts {
        // A `RelPath` is relative, with only normal components: it cannot leave `out`.
        let dest = out.join(&a.path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).ctx(|| format!("cannot create `{}`", dir.display()))?;
        }
        let got = match store.fetch(target, &m, a, &dest).await {
            Ok(got) => got,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
        };
        if got == a.sha256 {
            println!("ok        {}", dest.display());
        } else {
            bad += 1;
            let _ = std::fs::remove_file(&dest);
            println!(
                "MISMATCH  {} (manifest sha256 {}, downloaded {got})",
                a.path, a.sha256
            );
        }
    }
    Ok(Exit::of(bad == 0))
}
