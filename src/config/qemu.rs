//! QEMU builders: a Debian image runner bakes (`distro`, `suite`), or a distribution's cloud
//! image (`image`, see [`super::cloud`]); the keys of one kind are refused on the other.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::cloud::{CloudImage, Firmware, RawCloud, RawImage, is_package_name};
use super::shape::{DEFAULT_SHAPE, DISK, MEMORY, Shape, VCPUS};
use super::size::GIB;
use super::value::{self, BOOT_TIMEOUT, Example};
use super::{Arch, ConfigError, Size, Source};

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
/// distribution's cloud image, customised once.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    pub kind: ImageKind,
    pub arch: Arch,
    /// Extra packages baked into the image, sorted and deduplicated.
    pub packages: Vec<String>,
    pub shape: Shape,
    pub disk: Size,
    pub boot_timeout: Duration,
}

/// Which kind of image a QEMU builder boots; the keys of one kind are refused on the other.
#[derive(Debug, Clone)]
pub enum ImageKind {
    /// runner bakes it from a Debian suite.
    Debian {
        suite: String,
        init: Init,
        /// Start machines from a snapshot when possible (default); `false` always boots
        /// cold.
        warm: bool,
    },
    /// A distribution's cloud image: it boots its own init (systemd), by firmware, and
    /// always cold.
    Cloud(CloudImage),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQemu {
    #[allow(dead_code)]
    backend: String,
    /// Read by [`super::Builder::load`] (every backend takes it alike).
    #[allow(dead_code)]
    #[serde(default)]
    cache: Vec<toml::Value>,
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

impl QemuBuilder {
    pub fn cloud(&self) -> Option<&CloudImage> {
        match &self.kind {
            ImageKind::Cloud(c) => Some(c),
            ImageKind::Debian { .. } => None,
        }
    }

    pub(super) fn from_raw(src: &Source, raw: RawQemu) -> Result<QemuBuilder, ConfigError> {
        let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
        let kind = match &raw.image {
            Some(image) => ImageKind::Cloud(cloud_image(src, &raw, image)?),
            None => ImageKind::Debian {
                suite: debian_suite(src, &raw)?,
                init: raw.init.as_ref().map(|i| *i.get_ref()).unwrap_or_default(),
                warm: raw.warm.as_ref().is_none_or(|w| *w.get_ref()),
            },
        };
        let cloud = matches!(kind, ImageKind::Cloud(_));
        let valid: fn(&str) -> bool = if cloud {
            is_package_name
        } else {
            is_debian_name
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
                        if cloud { "" } else { "Debian " }
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
        let default_boot = default_boot_timeout(raw.arch, cloud);
        let boot_timeout = value::duration(
            src,
            raw.boot_timeout.as_ref(),
            "boot_timeout",
            (BOOT_TIMEOUT, Example("90s")),
            default_boot,
        )?;
        Ok(QemuBuilder {
            kind,
            arch: raw.arch,
            packages,
            shape,
            disk,
            boot_timeout,
        })
    }
}

/// A QEMU machine's boot timeout when its builder names none (also for builders a manifest
/// describes). Foreign architectures are fully emulated and boot several times slower; a
/// cloud image boots firmware, its bootloader, systemd and cloud-init.
pub fn default_boot_timeout(arch: Arch, cloud: bool) -> Duration {
    Duration::from_secs(match (arch.is_native(), cloud) {
        (true, false) => 120,
        (true, true) | (false, false) => 300,
        (false, true) => 600,
    })
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
