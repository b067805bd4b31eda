//! Builder files (`builders/<name>.toml`): where a machine comes from and what is in it.
//!
//! The backend is read first and decides which schema the rest of the file must match, so an
//! EC2 key in a QEMU builder is reported as unknown rather than silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::cloud::{CloudImage, Firmware, RawCloud, RawImage, is_package_name};
use super::ec2::{Ec2Builder, RawEc2};
use super::size::{GIB, MIB};
use super::value::{self, BOOT_TIMEOUT, Example, Range};
use super::{Arch, ConfigError, Size, Source};

#[derive(Debug, Clone)]
pub struct Builder {
    pub name: String,
    pub path: PathBuf,
    pub backend: BackendConfig,
}

/// What the file says about the machines, per kind of backend. Only `machine/` (the factory
/// and the backends) looks inside; the rest of runner asks the [`Builder`].
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Qemu(QemuBuilder),
    Ec2(Ec2Builder),
}

/// How big a machine is, where the builder decides it (QEMU; an EC2 instance type decides
/// its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub memory: Size,
}

/// What runs as PID 1 in a QEMU machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// runner's own: mounts what a build needs, then sshd. Fastest to boot.
    #[default]
    Lean,
    /// The image's systemd, for builds that need services (`systemctl start …`).
    Systemd,
}

impl Init {
    pub fn as_str(self) -> &'static str {
        match self {
            Init::Lean => "lean",
            Init::Systemd => "systemd",
        }
    }

    pub fn is_lean(&self) -> bool {
        *self == Init::Lean
    }
}

/// A machine image booted under QEMU: one runner bakes from a Debian suite, or a
/// distribution's cloud image (`cloud`), customised once.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    /// The Debian suite runner bakes from; empty for a cloud image.
    pub suite: String,
    /// A cloud image instead of a baked Debian image (then `suite` and `init` do not apply,
    /// and machines always boot cold, by firmware).
    pub cloud: Option<CloudImage>,
    pub arch: Arch,
    /// Extra packages baked into the image, sorted and deduplicated.
    pub packages: Vec<String>,
    pub init: Init,
    /// Start machines from a snapshot when possible (default); `false` always boots cold.
    pub warm: bool,
    pub shape: Shape,
    pub disk: Size,
    pub boot_timeout: Duration,
}

#[derive(Deserialize)]
struct BackendOnly {
    backend: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQemu {
    #[allow(dead_code)]
    backend: String,
    distro: Option<Spanned<String>>,
    suite: Option<Spanned<String>>,
    image: Option<Spanned<RawImage>>,
    ssh_user: Option<Spanned<String>>,
    firmware: Option<Spanned<Firmware>>,
    bake_script: Option<Spanned<String>>,
    arch: Arch,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    init: Option<Spanned<Init>>,
    warm: Option<Spanned<bool>>,
    vcpus: Option<Spanned<u32>>,
    memory: Option<Spanned<Size>>,
    disk: Option<Spanned<Size>>,
    boot_timeout: Option<Spanned<String>>,
}

pub const VCPUS: Range<u32> = Range { min: 1, max: 64 };
pub const MEMORY: Range<Size> = Range {
    min: Size(128 * MIB),
    max: Size(256 * GIB),
};
const DISK: Range<Size> = Range {
    min: Size(GIB),
    max: Size(2048 * GIB),
};
const DEFAULT_SHAPE: Shape = Shape {
    vcpus: 2,
    memory: Size(GIB),
};

impl Builder {
    /// Loads `builders/<name>.toml` below `project`, or `name` itself when it is a path.
    pub fn find(project: &Path, name: &str) -> Result<Builder, ConfigError> {
        let path = if name.ends_with(".toml") || name.contains('/') {
            PathBuf::from(name)
        } else {
            project.join("builders").join(format!("{name}.toml"))
        };
        Builder::load(&path)
    }

    pub fn load(path: &Path) -> Result<Builder, ConfigError> {
        let src = Source::read(path)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let BackendOnly { backend } = src.parse()?;
        let backend = match backend.get_ref().as_str() {
            "qemu" => BackendConfig::Qemu(QemuBuilder::from_raw(&src, src.parse()?)?),
            "ec2" => BackendConfig::Ec2(Ec2Builder::from_raw(&src, src.parse::<RawEc2>()?)?),
            other => {
                return Err(src.error_at(
                    Some(backend.span()),
                    Some("backend".into()),
                    format!("unknown backend `{other}` (expected `qemu` or `ec2`)"),
                ));
            }
        };
        Ok(Builder {
            name,
            path: path.to_owned(),
            backend,
        })
    }

    /// Every `*.toml` in `builders/`, sorted by name; the first bad file stops the listing.
    pub fn all(project: &Path) -> Result<Vec<Builder>, ConfigError> {
        let dir = project.join("builders");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths.iter().map(|p| Builder::load(p)).collect()
    }

    pub fn arch(&self) -> Arch {
        match &self.backend {
            BackendConfig::Qemu(q) => q.arch,
            BackendConfig::Ec2(e) => e.arch,
        }
    }

    pub fn boot_timeout(&self) -> Duration {
        match &self.backend {
            BackendConfig::Qemu(q) => q.boot_timeout,
            BackendConfig::Ec2(e) => e.boot_timeout,
        }
    }

    /// The machine size this builder gives, if it is the builder's to give.
    pub fn shape(&self) -> Option<Shape> {
        match &self.backend {
            BackendConfig::Qemu(q) => Some(q.shape),
            BackendConfig::Ec2(_) => None,
        }
    }

    /// A target's `vcpus`/`memory` (in `src`, the file that sets them) applied to this
    /// builder's shape, through the same checks as the builder's own values. A builder whose
    /// machines size themselves (EC2: the instance type) refuses them, rather than ignore them.
    pub fn shape_with(
        &self,
        src: &Source,
        vcpus: Option<&Spanned<u32>>,
        memory: Option<&Spanned<Size>>,
    ) -> Result<Option<Shape>, ConfigError> {
        let Some(base) = self.shape() else {
            if let Some((span, key)) = vcpus
                .map(|v| (v.span(), "vcpus"))
                .or(memory.map(|m| (m.span(), "memory")))
            {
                return Err(src.error_at(
                    Some(span),
                    Some(key.into()),
                    format!(
                        "builder `{}` runs on EC2, where the instance type decides vCPUs and \
                         memory: choose `instance_types` in {} instead",
                        self.name,
                        self.path.display()
                    ),
                ));
            }
            return Ok(None);
        };
        Ok(Some(Shape {
            vcpus: value::count(src, vcpus, "vcpus", VCPUS, base.vcpus)?,
            memory: value::size(src, memory, "memory", MEMORY, base.memory)?,
        }))
    }

    /// One line for `runner list`: backend, what the machines are, arch, size.
    pub fn summary(&self) -> [String; 5] {
        match &self.backend {
            BackendConfig::Qemu(q) => [
                "qemu".into(),
                match &q.cloud {
                    Some(c) => c.source.file_name(),
                    None => q.suite.clone(),
                },
                q.arch.debian().into(),
                q.shape.vcpus.to_string(),
                q.shape.memory.to_string(),
            ],
            BackendConfig::Ec2(e) => [
                "ec2".into(),
                "-".into(),
                e.arch.debian().into(),
                e.instance_types.join(","),
                String::new(),
            ],
        }
    }
}

impl QemuBuilder {
    fn from_raw(src: &Source, raw: RawQemu) -> Result<QemuBuilder, ConfigError> {
        let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
        let (suite, cloud) = match &raw.image {
            Some(image) => (String::new(), Some(cloud_image(src, &raw, image)?)),
            None => (debian_suite(src, &raw)?, None),
        };
        let valid: fn(&str) -> bool = match cloud {
            Some(_) => is_package_name,
            None => is_debian_name,
        };
        let mut packages = Vec::new();
        for p in &raw.packages {
            if !valid(p.get_ref()) {
                return Err(bad(
                    p.span(),
                    "packages",
                    format!(
                        "`{}` is not a {}package name",
                        p.get_ref(),
                        if cloud.is_some() { "" } else { "Debian " }
                    ),
                ));
            }
            packages.push(p.get_ref().clone());
        }
        packages.sort();
        packages.dedup();

        let shape = Shape {
            vcpus: value::count(src, raw.vcpus.as_ref(), "vcpus", VCPUS, DEFAULT_SHAPE.vcpus)?,
            memory: value::size(
                src,
                raw.memory.as_ref(),
                "memory",
                MEMORY,
                DEFAULT_SHAPE.memory,
            )?,
        };
        let disk = value::size(src, raw.disk.as_ref(), "disk", DISK, Size(4 * GIB))?;
        // Foreign architectures are fully emulated and boot several times slower; a cloud
        // image boots firmware, its bootloader, systemd and cloud-init.
        let default_boot = Duration::from_secs(match (raw.arch.is_native(), cloud.is_some()) {
            (true, false) => 120,
            (true, true) | (false, false) => 300,
            (false, true) => 600,
        });
        let boot_timeout = value::duration(
            src,
            raw.boot_timeout.as_ref(),
            "boot_timeout",
            (BOOT_TIMEOUT, Example("90s")),
            default_boot,
        )?;
        Ok(QemuBuilder {
            warm: cloud.is_none() && raw.warm.map(Spanned::into_inner).unwrap_or(true),
            suite,
            cloud,
            arch: raw.arch,
            packages,
            init: raw.init.map(Spanned::into_inner).unwrap_or_default(),
            shape,
            disk,
            boot_timeout,
        })
    }
}

/// `distro` and `suite` of a builder runner bakes from Debian.
fn debian_suite(src: &Source, raw: &RawQemu) -> Result<String, ConfigError> {
    let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
    let (Some(distro), Some(suite)) = (&raw.distro, &raw.suite) else {
        let missing = if raw.distro.is_none() {
            "distro"
        } else {
            "suite"
        };
        return Err(src.error_at(
            Some(0..0),
            Some(missing.into()),
            format!(
                "missing field `{missing}`: a QEMU builder bakes a Debian suite \
                 (distro = \"debian\", suite = \"bookworm\") or boots a cloud image (image = {{ url = …, sha256 = … }})"
            ),
        ));
    };
    if distro.get_ref() != "debian" {
        return Err(bad(
            distro.span(),
            "distro",
            format!(
                "unsupported distro `{}` (runner bakes `debian`; for another distribution, boot \
                 its cloud image: image = {{ url = …, checksum_url = … }})",
                distro.get_ref()
            ),
        ));
    }
    if !is_debian_name(suite.get_ref()) {
        return Err(bad(
            suite.span(),
            "suite",
            format!("`{}` is not a Debian suite name", suite.get_ref()),
        ));
    }
    for (key, span) in [
        ("ssh_user", raw.ssh_user.as_ref().map(|v| v.span())),
        ("firmware", raw.firmware.as_ref().map(|v| v.span())),
        ("bake_script", raw.bake_script.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            return Err(bad(
                span,
                key,
                format!(
                    "`{key}` applies to cloud images (`image = …`), not to baked Debian images"
                ),
            ));
        }
    }
    Ok(suite.get_ref().clone())
}

/// The cloud-image part of a builder with `image = …`; keys of baked images are refused.
fn cloud_image(
    src: &Source,
    raw: &RawQemu,
    image: &Spanned<RawImage>,
) -> Result<CloudImage, ConfigError> {
    let bad = |span, key: &str, msg: &str| src.error_at(Some(span), Some(key.into()), msg);
    if let Some(d) = raw.distro.as_ref().or(raw.suite.as_ref()) {
        let key = if raw.distro.is_some() {
            "distro"
        } else {
            "suite"
        };
        return Err(bad(
            d.span(),
            key,
            "a builder boots a cloud image (`image`) or bakes a Debian suite, not both",
        ));
    }
    if let Some(i) = &raw.init {
        return Err(bad(
            i.span(),
            "init",
            "a cloud image boots its own init (systemd); `init` applies to baked images",
        ));
    }
    if let Some(w) = raw.warm.as_ref().filter(|w| *w.get_ref()) {
        return Err(bad(
            w.span(),
            "warm",
            "warm starts need runner's own guest init; cloud images always boot cold",
        ));
    }
    CloudImage::from_raw(
        src,
        RawCloud {
            image,
            ssh_user: raw.ssh_user.as_ref(),
            firmware: raw.firmware.as_ref(),
            bake_script: raw.bake_script.as_ref(),
            arch: raw.arch,
        },
    )
}

/// Debian package and suite names: lowercase alphanumerics and `+-.`, starting alphanumeric.
/// Checked because these names end up as arguments to mmdebstrap.
pub fn is_debian_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}
