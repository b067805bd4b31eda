//! A target's `cache = [...]` and `cache_key`: guest directories whose contents persist
//! between builds of one cache key (see the top-level `cache` module). Checked here, at load
//! time, so a path the guest could not bind-mount, or one that would hide runner's own
//! directories, fails with the file, line and key before any machine boots.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

/// `cache_transfer`: how a target's cache reaches its machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheTransfer {
    /// A disk where the machine takes one (local), else an archive in the bucket the target
    /// publishes to, else no cache (said in the log).
    #[default]
    Auto,
    /// Always a disk; a builder whose machines take none is an error.
    Attach,
    /// Always an archive fetched and saved by the machine through presigned URLs (a target
    /// that does not publish to S3 is an error).
    Fetch,
}

/// What a target declares to keep between its builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDecl {
    /// Absolute guest paths, in the order written; none inside another.
    pub paths: Vec<String>,
    /// `cache_key`: shares the cache with every target that names the same key (on the same
    /// builder recipe); `None`: the target's own.
    pub key: Option<String>,
    pub transfer: CacheTransfer,
}

/// A target's or builder's own `cache = [...]`, if it writes one.
pub type Own<'a> = Option<&'a [Spanned<String>]>;

/// The most directories one target may cache.
pub const MAX_PATHS: usize = 16;
/// The longest cached path.
const MAX_PATH_LEN: usize = 256;
/// Where no cache may go: the kernel's and runner's own trees (`/build` is emptied and
/// refilled by every delivery, `/run` holds the cache's own mount).
const RESERVED: [&str; 6] = ["/proc", "/sys", "/dev", "/run", "/build", "/boot"];

/// The cache of a target (or a builder: `owner`), or `None` when it declares none: its own
/// `paths`, else (`None`: it does not say) those of `inherited`, its builder's, under its own
/// `key` if it names one, carried as `transfer` says. `cache = []` turns a builder's cache
/// off for one target.
pub fn declared(
    src: &Source,
    owner: &str,
    (paths, key, transfer): (
        Own<'_>,
        Option<&Spanned<String>>,
        Option<&Spanned<CacheTransfer>>,
    ),
    inherited: Option<&CacheDecl>,
) -> Result<Option<CacheDecl>, ConfigError> {
    let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
    let inherited = if paths.is_some() { None } else { inherited };
    let paths = paths.unwrap_or_default();
    let transfer_of =
        |t: Option<&Spanned<CacheTransfer>>| t.map_or_else(Default::default, |t| *t.get_ref());
    if paths.is_empty() {
        return match (key.map(|k| (k.span(), "cache_key")), transfer, inherited) {
            (_, _, Some(from)) => Ok(Some(CacheDecl {
                paths: from.paths.clone(),
                key: key.map(|k| checked_key(src, k)).transpose()?,
                transfer: transfer_of(transfer),
            })),
            (Some((span, name)), _, None) => Err(bad(
                span,
                name,
                format!("target `{owner}`: {name} without cache = [...] shares nothing"),
            )),
            (None, Some(t), None) => Err(bad(
                t.span(),
                "cache_transfer",
                format!("target `{owner}`: cache_transfer without cache = [...] carries nothing"),
            )),
            (None, None, None) => Ok(None),
        };
    }
    if paths.len() > MAX_PATHS {
        return Err(bad(
            paths[MAX_PATHS].span(),
            "cache",
            format!("`{owner}`: at most {MAX_PATHS} cached directories"),
        ));
    }
    let mut kept: Vec<String> = Vec::new();
    for p in paths {
        let path = p.get_ref();
        check_path(path).map_err(|why| bad(p.span(), "cache", format!("`{path}` {why}")))?;
        if let Some(other) = kept.iter().find(|k| nested(k, path) || nested(path, k)) {
            return Err(bad(
                p.span(),
                "cache",
                format!("`{path}` overlaps `{other}`: cached directories may not nest"),
            ));
        }
        kept.push(path.clone());
    }
    Ok(Some(CacheDecl {
        paths: kept,
        key: key.map(|k| checked_key(src, k)).transpose()?,
        transfer: transfer_of(transfer),
    }))
}

/// A `cache_key`: one name, as a target's.
fn checked_key(src: &Source, k: &Spanned<String>) -> Result<String, ConfigError> {
    if super::names::is_component_name(k.get_ref()) {
        return Ok(k.get_ref().clone());
    }
    Err(src.error_at(
        Some(k.span()),
        Some("cache_key".into()),
        format!(
            "`{}` may use only letters, digits, `.`, `_` and `-` (at most 128 characters)",
            k.get_ref()
        ),
    ))
}

/// Why `path` cannot be cached, if it cannot: it must be absolute and normal, in characters
/// a shell line carries unquoted, outside the reserved trees.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute guest path".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("is longer than {MAX_PATH_LEN} characters"));
    }
    let odd = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c)));
    if let Some(c) = odd {
        return Err(format!(
            "holds `{c}`: use letters, digits and `/._-+@` only"
        ));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err("must be a normal path (no `//`, `.`, `..` or trailing `/`)".into());
    }
    if path == "/" {
        return Err("is the whole root".into());
    }
    if let Some(r) = RESERVED.iter().find(|r| nested(r, path)) {
        return Err(format!("is inside `{r}`, which the guest or runner owns"));
    }
    Ok(())
}

/// Whether `inner` is `outer` or below it.
fn nested(outer: &str, inner: &str) -> bool {
    inner == outer || inner.starts_with(&format!("{outer}/"))
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn only_normal_absolute_paths_outside_runner_s_trees_are_cached() {
        for ok in [
            "/var/cache/apt/archives",
            "/root/.cache/ccache",
            "/opt/x+y@1",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "var/cache",
            "/",
            "/var//cache",
            "/var/cache/",
            "/var/../etc",
            "/build/out",
            "/proc",
            "/run/x",
            "/a b",
            "/a'b",
            "/a\nb",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(
            check_path("/buildx").is_ok(),
            "only whole components are reserved"
        );
    }
}

#[cfg(test)]
mod inherited {
    use crate::config::Project;

    const BUILDER: &str = "backend = \"qemu\"\ndistro = \"debian\"\nsuite = \"bookworm\"\n\
                           arch = \"amd64\"\ncache = [\"/var/cache/apt/archives\"]\n";

    fn load(targets: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("builders")).unwrap();
        std::fs::write(dir.path().join("builders/b.toml"), BUILDER).unwrap();
        std::fs::write(dir.path().join("build.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("runner.toml"), targets).unwrap();
        Project::load(dir.path()).unwrap()
    }

    #[test]
    fn a_target_takes_its_builder_s_cache_unless_it_names_its_own() {
        let head = "builder = \"b\"\nscript = \"build.sh\"\n";
        let p = load(&format!(
            "[target.plain]\n{head}\n[target.keyed]\n{head}cache_key = \"apt\"\n\
             [target.own]\n{head}cache = [\"/root/.cache/ccache\"]\n\
             [target.none]\n{head}cache = []\n"
        ));
        assert_eq!(p.targets["none"].cache, None);
        let cache = |t: &str| p.targets[t].cache.clone().unwrap();
        assert_eq!(cache("plain").paths, ["/var/cache/apt/archives"]);
        assert_eq!(cache("plain").key, None);
        assert_eq!(cache("keyed").key.as_deref(), Some("apt"));
        assert_eq!(cache("own").paths, ["/root/.cache/ccache"]);
    }
}
