//! `runner init`: a new project that builds as it is — runner.toml, a builder, a provision
//! script and a source file — so a first `runner build` shows the whole path working.

use std::path::Path;

use super::{Env, Exit};
use crate::error::{Error, IoContext, Result};

const FILES: &[(&str, &str)] = &[
    (
        "runner.toml",
        r#"# runner project: each [target.NAME] builds in a fresh VM. `runner build`, `runner list`.
[target.hello]
builder = "debian-12"          # builders/debian-12.toml
script = "build.sh"            # provision-scripts/build.sh; runs in /build/src
context = "src"                # sent to the VM; honours .gitignore and .runnerignore
artifacts = ["hello.txt"]      # globs in $RUNNER_OUT, collected into artifacts/hello/
timeout = "20m"
"#,
    ),
    (
        "builders/debian-12.toml",
        r#"# Where the machines come from: baked once, cached by this recipe's digest.
backend = "qemu"
distro = "debian"
suite = "bookworm"
arch = "amd64"
# packages = ["build-essential"]   # Debian packages baked into the image
# init = "systemd"                 # for builds that need services
"#,
    ),
    (
        "provision-scripts/build.sh",
        r#"#!/bin/sh
# Runs inside the VM in /build/src (the context), as root. runner sets RUNNER_TARGET,
# RUNNER_OUT (where artifacts go) and SOURCE_DATE_EPOCH.
set -eu
printf '%s, built on %s by %s\n' "$(cat greeting.txt)" "$(uname -m)" "$RUNNER_TARGET" \
  > "$RUNNER_OUT/hello.txt"
cat "$RUNNER_OUT/hello.txt"
"#,
    ),
    ("src/greeting.txt", "hello from a fresh VM\n"),
    (".gitignore", "/artifacts\n"),
];

pub fn init(env: &Env, dir: Option<&Path>) -> Result<Exit> {
    let root = dir.unwrap_or(&env.project);
    let taken: Vec<&str> = FILES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| root.join(name).exists())
        .collect();
    if !taken.is_empty() {
        return Err(Error::BadArgument {
            problem: format!(
                "{} already has {}: runner init only makes new projects",
                root.display(),
                taken.join(", ")
            ),
        });
    }
    for (name, text) in FILES {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .ctx(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, text).ctx(|| format!("cannot write `{}`", path.display()))?;
        if name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .ctx(|| format!("cannot make `{}` executable", path.display()))?;
        }
    }
    if !env.quiet {
        println!(
            "made a runner project in {}; build it with `runner build`",
            root.display()
        );
    }
    Ok(Exit::Success)
}
