//! What an image is made from, twice over: [`Recipe`], the typed form the QEMU backend bakes
//! (a Debian suite and its init, or a cloud image: one or the other, never a mix), and
//! [`ImageRecord`], the flat form manifests and `image.json` record. A record from a
//! manifest is untrusted; [`ImageRecord::check`] holds it to a builder file's rules before it
//! becomes a recipe, since its suite and packages reach mmdebstrap or a package manager.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::cloud::CloudRecipe;
use super::{CUSTOMISE, CUSTOMISE_STEPS, GUEST_FILES};
use crate::config::names::{self, Failed, Invalid, ensure};
use crate::config::shape::DISK;
use crate::config::{Arch, CloudImage, ImageKind, Init, QemuBuilder, Size};

/// The largest bake script a recorded cloud recipe may carry.
const MAX_BAKE_SCRIPT: usize = 1 << 20;
/// The most packages a recorded recipe may list.
const MAX_PACKAGES: usize = 4096;

/// Everything that determines an image's content, and nothing else (not vCPUs or memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub kind: RecipeKind,
    pub arch: Arch,
    /// Extra packages, sorted and deduplicated.
    pub packages: Vec<String>,
    pub disk: Size,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeKind {
    /// runner bakes it from a Debian suite, with its own guest files and `init`.
    Debian { suite: String, init: Init },
    /// A distribution's cloud image (held to its sha256), customised once.
    Cloud(CloudRecipe),
}

impl Recipe {
    /// The recipe of a Debian builder, or of a cloud builder whose image is known to have
    /// `sha256` (see `download::expected_sha256`).
    pub fn of(q: &QemuBuilder, cloud_sha256: impl FnOnce(&CloudImage) -> String) -> Recipe {
        let kind = match &q.kind {
            ImageKind::Debian { suite, init, .. } => RecipeKind::Debian {
                suite: suite.clone(),
                init: *init,
            },
            ImageKind::Cloud(c) => RecipeKind::Cloud(CloudRecipe::of(c, &cloud_sha256(c))),
        };
        Recipe {
            kind,
            arch: q.arch,
            packages: q.packages.clone(),
            disk: q.disk,
        }
    }

    pub fn cloud(&self) -> Option<&CloudRecipe> {
        match &self.kind {
            RecipeKind::Cloud(c) => Some(c),
            RecipeKind::Debian { .. } => None,
        }
    }

    /// What runs as PID 1 (a cloud image's own init is systemd).
    pub fn init(&self) -> Init {
        match &self.kind {
            RecipeKind::Debian { init, .. } => *init,
            RecipeKind::Cloud(_) => Init::Systemd,
        }
    }

    pub fn record(&self) -> ImageRecord {
        let (distro, suite, init, cloud) = match &self.kind {
            RecipeKind::Debian { suite, init } => ("debian", suite.clone(), *init, None),
            RecipeKind::Cloud(c) => ("cloud", String::new(), Init::Lean, Some(c.clone())),
        };
        ImageRecord {
            distro: distro.into(),
            suite,
            arch: self.arch,
            packages: self.packages.clone(),
            disk: self.disk,
            init,
            cloud,
        }
    }

    /// The image cache key (and a manifest's `recipe_digest`).
    pub fn digest(&self) -> String {
        self.record().digest()
    }
}

/// A recipe as manifests and `image.json` hold it. A cloud image's is `distro = "cloud"`
/// with an empty suite; `init` is absent for lean images, so records from before init kinds
/// read the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub distro: String,
    pub suite: String,
    pub arch: Arch,
    pub packages: Vec<String>,
    pub disk: Size,
    #[serde(default, skip_serializing_if = "Init::is_lean")]
    pub init: Init,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudRecipe>,
}

impl ImageRecord {
    /// The digest of the recipe this records: over the record's JSON (field order fixed by
    /// the struct) and, for a baked image, runner's guest files; for a cloud image, its
    /// customising steps instead, and not where its bytes come from.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        if let Some(c) = &self.cloud {
            let content = ImageRecord {
                cloud: Some(c.content()),
                ..self.clone()
            };
            h.update(b"runner-cloud-image-v1\0");
            h.update(serde_json::to_vec(&content).expect("a record serializes"));
            h.update(CUSTOMISE.as_bytes());
            h.update(CUSTOMISE_STEPS.to_le_bytes());
            return hex::encode(h.finalize());
        }
        h.update(b"runner-image-v1\0");
        h.update(serde_json::to_vec(self).expect("a record serializes"));
        for (name, text) in GUEST_FILES {
            for part in [name, text] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// The recipe, if the record is one a builder file could have said. A failure names the
    /// field below `builder.recipe`.
    pub fn recipe(&self) -> Result<Recipe, Failed> {
        let f = |name: &str| format!("builder.recipe.{name}");
        let (kind, package_ok): (_, fn(&str) -> bool) = match (self.distro.as_str(), &self.cloud) {
            ("debian", None) => {
                let suite = &self.suite;
                ensure(
                    names::is_debian_name(suite),
                    || f("suite"),
                    suite,
                    "a Debian suite name",
                )?;
                let kind = RecipeKind::Debian {
                    suite: suite.clone(),
                    init: self.init,
                };
                (kind, names::is_debian_name)
            }
            ("cloud", Some(c)) => {
                ensure(
                    self.suite.is_empty(),
                    || f("suite"),
                    &self.suite,
                    "empty for a cloud image",
                )?;
                ensure(
                    self.init.is_lean(),
                    || f("init"),
                    self.init.as_str(),
                    "absent for a cloud image (it boots its own init)",
                )?;
                cloud(c)?;
                (RecipeKind::Cloud(c.clone()), names::is_package_name)
            }
            _ => {
                return Err((
                    f("distro"),
                    Invalid::new(
                        &self.distro,
                        "`debian` (with a suite) or `cloud` (with an image)",
                    ),
                ));
            }
        };
        ensure(
            self.packages.len() <= MAX_PACKAGES,
            || f("packages"),
            "…",
            "at most 4096 packages",
        )?;
        for (i, p) in self.packages.iter().enumerate() {
            ensure(
                package_ok(p),
                || f(&format!("packages[{i}]")),
                p,
                "a package name",
            )?;
        }
        ensure(
            (DISK.min..=DISK.max).contains(&self.disk),
            || f("disk"),
            &self.disk.to_string(),
            "a disk size within the builder limits (1 GiB to 2 TiB)",
        )?;
        Ok(Recipe {
            kind,
            arch: self.arch,
            packages: self.packages.clone(),
            disk: self.disk,
        })
    }
}

/// A recorded cloud image as a builder file would have to say it.
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

// `image.json` holds the record; reading one back goes through the same checks.
impl Serialize for Recipe {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.record().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Recipe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Recipe, D::Error> {
        ImageRecord::deserialize(d)?
            .recipe()
            .map_err(|(field, why)| serde::de::Error::custom(format!("{field}: {why}")))
    }
}
