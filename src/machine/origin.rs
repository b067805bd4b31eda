//! Where a build's machine came from, as a manifest records it: a recipe runner bakes, or an
//! EC2 image definition (whose resolved AMI id is the manifest's base image). Its digest is
//! part of every build's inputs digest.

use serde::{Deserialize, Serialize};

use super::qemu::image::Recipe;
use crate::config::Arch;
use crate::digest::sha256_hex;

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

    pub fn arch(&self) -> Arch {
        match self {
            Origin::Image(r) => r.arch,
            Origin::Ec2(e) => e.arch,
        }
    }
}
