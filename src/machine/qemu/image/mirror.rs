//! Which Debian mirror to bake from: `--mirror`/`RUNNER_MIRROR`, else the host's own apt
//! configuration, read at run time so no mirror is ever written into the project.

use std::path::Path;

use crate::error::{Error, Result};

pub fn resolve(explicit: Option<&str>) -> Result<String> {
    if let Some(m) = explicit.filter(|m| !m.is_empty()) {
        return Ok(m.trim_end_matches('/').to_owned());
    }
    from_apt(Path::new("/etc/apt")).ok_or(Error::NoMirror)
}

/// The first `deb` source whose suites are not security or updates pockets.
pub fn from_apt(etc_apt: &Path) -> Option<String> {
    let mut files: Vec<_> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
    {
        if let Some(uri) = std::fs::read_to_string(f).ok().and_then(|t| deb822(&t)) {
            return Some(uri);
        }
    }
    let list = std::fs::read_to_string(etc_apt.join("sources.list")).ok()?;
    one_line(&list)
}

fn is_main_pocket(suite: &str) -> bool {
    !suite.contains("security") && !suite.contains('-')
}

fn deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let main = field("Suites").is_some_and(|s| s.split_whitespace().any(is_main_pocket));
        if enabled && is_deb && main {
            let uri = field("URIs")?;
            return uri
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_owned());
        }
    }
    None
}

fn one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
        (w.next()? == "deb").then_some(())?;
        let uri = w.next()?;
        is_main_pocket(w.next()?).then(|| uri.trim_end_matches('/').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_skipping_security() {
        let t = "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n\
                 Types: deb\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\n";
        assert_eq!(deb822(t).as_deref(), Some("http://m.example/debian"));
    }

    #[test]
    fn reads_one_line_format() {
        let t = "# c\ndeb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(one_line(t).as_deref(), Some("http://m.example/debian"));
    }
}
