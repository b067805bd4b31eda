//! Where a build's machine came from, as a manifest records it (`builder.recipe`): the
//! recipe of an image runner makes for QEMU, or an EC2 image definition (whose resolved AMI
//! id is the manifest's base image). Its digest is part of every build's inputs digest.
//!
//! The record is tagged by `backend`; manifests from before the tag hold a QEMU recipe bare,
//! and read the same.

use serde::{Deserialize, Deserializer, Serialize};

use super::qemu::image::{CloudRecipe, ImageRecord};
use crate::config::Arch;
use crate::config::names::{self, Failed, ensure};
use crate::digest::sha256_hex;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Origin {
    Qemu(ImageRecord),
    Ec2(Ec2Origin),
}

/// What of an EC2 builder determines the build environment (not instance types or networks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ec2Origin {
    /// As the builder asks for it (an id, or owner + name filter).
    pub ami: serde_json::Value,
    /// What that resolved to for this build: a newer match is a different build environment.
    pub image: String,
    pub arch: Arch,
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Origin, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "backend", rename_all = "lowercase")]
        enum Tagged {
            Qemu(ImageRecord),
            Ec2(Ec2Origin),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Tagged(Tagged),
            Bare(ImageRecord),
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Tagged(Tagged::Qemu(r)) | Wire::Bare(r) => Origin::Qemu(r),
            Wire::Tagged(Tagged::Ec2(e)) => Origin::Ec2(e),
        })
    }
}

impl Origin {
    pub fn digest(&self) -> String {
        match self {
            Origin::Qemu(r) => r.digest(),
            // The tagged record: `backend` first, as before the tag moved out of the struct.
            Origin::Ec2(_) => sha256_hex(
                &[
                    b"runner-ec2-v1\0".as_slice(),
                    &serde_json::to_vec(self).expect("origin serializes"),
                ]
                .concat(),
            ),
        }
    }

    /// What differs from `old`, field by field, for `runner why`: `packages +libssl-dev`,
    /// `suite bookworm → trixie`, `AMI ami-1 → ami-2`.
    pub fn changes_from(&self, old: &Origin) -> Vec<String> {
        match (old, self) {
            (Origin::Qemu(a), Origin::Qemu(b)) => {
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
            Origin::Qemu(_) => "qemu",
            Origin::Ec2(_) => "ec2",
        }
    }

    /// Checks a recorded origin (from a manifest: untrusted) as a builder file's values are
    /// checked, since its suite and packages go to mmdebstrap or a package manager and its
    /// image is downloaded and booted. A failure names the field below `builder.recipe`.
    pub fn check(&self) -> Result<(), Failed> {
        match self {
            Origin::Qemu(r) => r.recipe().map(drop),
            Origin::Ec2(e) => ec2(e),
        }
    }

    pub fn arch(&self) -> Arch {
        match self {
            Origin::Qemu(r) => r.arch,
            Origin::Ec2(e) => e.arch,
        }
    }
}

/// What differs between two cloud images' recipes: the image itself, who logs in, how it
/// boots, what the customising boot runs.
fn cloud_changes(out: &mut Vec<String>, a: Option<&CloudRecipe>, b: Option<&CloudRecipe>) {
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

fn ec2(e: &Ec2Origin) -> Result<(), Failed> {
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
