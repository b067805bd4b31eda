//! Where a build's machine came from, as a manifest records it: a recipe runner bakes, or an
//! EC2 image definition (whose resolved AMI id is the manifest's base image). Its digest is
//! part of every build's inputs digest.

use serde::{Deserialize, Serialize};

use super::qemu::image::{CloudRecipe, Recipe};
use crate::config::Arch;
use crate::config::names::{self, Failed, Invalid, ensure};
use crate::config::shape::DISK;
use crate::digest::sha256_hex;

/// The largest bake script a recorded cloud recipe may carry.
const MAX_BAKE_SCRIPT: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Origin {
    Image(Recipe),
    Ec2(Ec2Origin),
}

/// What of an EC2 builder determines the build environment (not instance types or networks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ec2Origin {
    pub backend: String,
    /// As the builder asks for it (an id, or owner + name filter).
    pub ami: serde_json::Value,
    /// What that resolved to for this build: a newer match is a different build environment.
    pub image: String,
    pub arch: Arch,
}

impl Origin {
    pub fn digest(&self) -> String {
        match self {
            Origin::Image(r) => r.digest(),
            Origin::Ec2(e) => sha256_hex(
                &[
                    b"runner-ec2-v1\0".as_slice(),
                    &serde_json::to_vec(e).expect("origin serializes"),
                ]
                .concat(),
            ),
        }
    }

    /// What differs from `old`, field by field, for `runner why`: `packages +libssl-dev`,
    /// `suite bookworm → trixie`, `AMI ami-1 → ami-2`.
    pub fn changes_from(&self, old: &Origin) -> Vec<String> {
        match (old, self) {
            (Origin::Image(a), Origin::Image(b)) => {
                let mut out = vec![];
                let field = |out: &mut Vec<String>, name: &str, x: String, y: String| {
                    if x != y {
                        out.push(format!("{name} {x} → {y}"));
                    }
                };
                field(&mut out, "distro", a.distro.clone(), b.distro.clone());
                field(&mut out, "suite", a.suite.clone(), b.suite.clone());
                field(
                    &mut out,
                    "arch",
                    a.arch.debian().into(),
                    b.arch.debian().into(),
                );
                field(&mut out, "disk", a.disk.to_string(), b.disk.to_string());
                field(
                    &mut out,
                    "init",
                    a.init.as_str().into(),
                    b.init.as_str().into(),
                );
                let added: Vec<String> = b
                    .packages
                    .iter()
                    .filter(|p| !a.packages.contains(p))
                    .map(|p| format!("+{p}"))
                    .collect();
                let removed: Vec<String> = a
                    .packages
                    .iter()
                    .filter(|p| !b.packages.contains(p))
                    .map(|p| format!("-{p}"))
                    .collect();
                if !added.is_empty() || !removed.is_empty() {
                    out.push(format!("packages {}", [added, removed].concat().join(" ")));
                }
                cloud_changes(&mut out, a.cloud.as_ref(), b.cloud.as_ref());
                if out.is_empty() && a.digest() != b.digest() {
                    out.push("runner's guest scripts changed (the image is baked anew)".into());
                }
                out
            }
            (Origin::Ec2(a), Origin::Ec2(b)) if a.image != b.image => {
                vec![format!("AMI {} → {}", a.image, b.image)]
            }
            (Origin::Ec2(a), Origin::Ec2(b)) if a != b => {
                vec![format!("image {} → {}", a.ami, b.ami)]
            }
            (a, b) if a.kind() != b.kind() => vec![format!("backend {} → {}", a.kind(), b.kind())],
            _ => vec![],
        }
    }

    /// Which kind of machine source, for provenance's builder id.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Image(_) => "qemu",
            Origin::Ec2(_) => "ec2",
        }
    }

    /// Checks a recorded origin (from a manifest: untrusted) as a builder file's values are
    /// checked, since its suite and packages go to mmdebstrap or a package manager and its
    /// image is downloaded and booted. A failure names the field below `builder.recipe`.
    pub fn check(&self) -> Result<(), Failed> {
        match self {
            Origin::Image(r) => recipe(r),
            Origin::Ec2(e) => ec2(e),
        }
    }

    pub fn arch(&self) -> Arch {
        match self {
            Origin::Image(r) => r.arch,
            Origin::Ec2(e) => e.arch,
        }
    }
}

/// What differs between two cloud images' recipes: the image itself, who logs in, how it
/// boots, what the customising boot runs.
fn cloud_changes(
    out: &mut Vec<String>,
    a: Option<&super::qemu::image::CloudRecipe>,
    b: Option<&super::qemu::image::CloudRecipe>,
) {
    let (Some(a), Some(b)) = (a, b) else { return };
    let short = |s: &str| s.chars().take(16).collect::<String>();
    if a.sha256 != b.sha256 {
        out.push(format!(
            "image {} ({}) → {} ({})",
            a.location(),
            short(&a.sha256),
            b.location(),
            short(&b.sha256)
        ));
    }
    if a.ssh_user != b.ssh_user {
        out.push(format!("ssh_user {} → {}", a.ssh_user, b.ssh_user));
    }
    if a.firmware != b.firmware {
        out.push(format!(
            "firmware {} → {}",
            a.firmware.as_str(),
            b.firmware.as_str()
        ));
    }
    if a.bake_script != b.bake_script {
        out.push("bake_script changed".into());
    }
}

/// A recipe as a builder file would have to say it.
fn recipe(r: &Recipe) -> Result<(), Failed> {
    let f = |name: &str| format!("builder.recipe.{name}");
    let package_ok: fn(&str) -> bool = match (r.distro.as_str(), &r.cloud) {
        ("debian", None) => {
            ensure(
                names::is_debian_name(&r.suite),
                || f("suite"),
                &r.suite,
                "a Debian suite name",
            )?;
            names::is_debian_name
        }
        ("cloud", Some(c)) => {
            ensure(
                r.suite.is_empty(),
                || f("suite"),
                &r.suite,
                "empty for a cloud image",
            )?;
            cloud(c)?;
            names::is_package_name
        }
        _ => {
            return Err((
                f("distro"),
                Invalid::new(
                    &r.distro,
                    "`debian` (with a suite) or `cloud` (with an image)",
                ),
            ));
        }
    };
    ensure(
        r.packages.len() <= 4096,
        || f("packages"),
        "…",
        "at most 4096 packages",
    )?;
    for (i, p) in r.packages.iter().enumerate() {
        ensure(
            package_ok(p),
            || f(&format!("packages[{i}]")),
            p,
            "a package name",
        )?;
    }
    ensure(
        (DISK.min..=DISK.max).contains(&r.disk),
        || f("disk"),
        &r.disk.to_string(),
        "a disk size within the builder limits (1 GiB to 2 TiB)",
    )
}

fn cloud(c: &CloudRecipe) -> Result<(), Failed> {
    let f = |name: &str| format!("builder.recipe.cloud.{name}");
    match (&c.url, &c.path) {
        (Some(url), None) => ensure(
            url.len() <= 4096
                && (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(|ch: char| ch.is_whitespace() || ch.is_control()),
            || f("url"),
            url,
            "an http(s) URL",
        )?,
        (None, Some(path)) => ensure(
            path.len() <= 4096
                && path.starts_with('/')
                && std::path::Path::new(path).components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                }),
            || f("path"),
            path,
            "an absolute path without `.` or `..`",
        )?,
        _ => {
            return Err((
                f("url"),
                Invalid::new("", "exactly one of `url` and `path`"),
            ));
        }
    }
    ensure(
        names::is_sha256_lower(&c.sha256),
        || f("sha256"),
        &c.sha256,
        "a SHA-256 (64 lowercase hex digits)",
    )?;
    ensure(
        names::is_user_name(&c.ssh_user),
        || f("ssh_user"),
        &c.ssh_user,
        "a login name",
    )?;
    let script = c.bake_script.as_deref().unwrap_or_default();
    ensure(
        script.len() <= MAX_BAKE_SCRIPT,
        || f("bake_script"),
        "…",
        "at most 1 MiB",
    )
}

fn ec2(e: &Ec2Origin) -> Result<(), Failed> {
    ensure(
        e.backend == "ec2",
        || "builder.recipe.backend".into(),
        &e.backend,
        "`ec2`",
    )?;
    ensure(
        names::is_ami_id(&e.image),
        || "builder.recipe.image".into(),
        &e.image,
        "an AMI id",
    )?;
    let ami = e.ami.to_string();
    ensure(
        ami.len() <= 4096,
        || "builder.recipe.ami".into(),
        "…",
        "an AMI definition of at most 4 KiB",
    )
}
