//! Builder files (`builders/<name>.toml`): where a machine comes from and what is in it.
//!
//! The backend is read first and decides which schema the rest of the file must match, so an
//! EC2 key in a QEMU builder is reported as unknown rather than silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ec2::{Ec2Builder, RawEc2};
use super::size::{GIB, MIB};
use super::{ConfigError, Size, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// What `uname -m` says inside a guest of this architecture.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Builder {
    pub name: String,
    pub path: PathBuf,
    pub backend: Backend,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Qemu(QemuBuilder),
    Ec2(Ec2Builder),
}

/// A Debian image booted under QEMU.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    pub suite: String,
    pub arch: Arch,
    /// Extra Debian packages baked into the image, sorted and deduplicated.
    pub packages: Vec<String>,
    pub vcpus: u32,
    pub memory: Size,
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
    distro: Spanned<String>,
    suite: Spanned<String>,
    arch: Arch,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    vcpus: Option<Spanned<u32>>,
    memory: Option<Spanned<Size>>,
    disk: Option<Spanned<Size>>,
    boot_timeout: Option<Spanned<String>>,
}

/// Explicit limits, firecracker-style: a value outside them is a typo, not a wish.
const MAX_VCPUS: u32 = 64;
const MEMORY_RANGE: (u64, u64) = (128 * MIB, 256 * GIB);
const DISK_RANGE: (u64, u64) = (GIB, 2048 * GIB);
const MAX_BOOT_TIMEOUT: Duration = Duration::from_secs(3600);

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
            "qemu" => Backend::Qemu(QemuBuilder::from_raw(&src, src.parse()?)?),
            "ec2" => Backend::Ec2(Ec2Builder::from_raw(&src, src.parse::<RawEc2>()?)?),
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

    /// The QEMU definition, for what only exists with QEMU (baked images).
    pub fn qemu(&self) -> Option<&QemuBuilder> {
        match &self.backend {
            Backend::Qemu(q) => Some(q),
            Backend::Ec2(_) => None,
        }
    }

    pub fn arch(&self) -> Arch {
        match &self.backend {
            Backend::Qemu(q) => q.arch,
            Backend::Ec2(e) => e.arch,
        }
    }

    pub fn boot_timeout(&self) -> Duration {
        match &self.backend {
            Backend::Qemu(q) => q.boot_timeout,
            Backend::Ec2(e) => e.boot_timeout,
        }
    }
}

impl QemuBuilder {
    fn from_raw(src: &Source, raw: RawQemu) -> Result<QemuBuilder, ConfigError> {
        let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);

        if raw.distro.get_ref() != "debian" {
            return Err(bad(
                raw.distro.span(),
                "distro",
                format!(
                    "unsupported distro `{}` (expected `debian`)",
                    raw.distro.get_ref()
                ),
            ));
        }
        let suite = raw.suite.get_ref();
        if !is_debian_name(suite) {
            return Err(bad(
                raw.suite.span(),
                "suite",
                format!("`{suite}` is not a Debian suite name"),
            ));
        }
        let mut packages = Vec::new();
        for p in &raw.packages {
            if !is_debian_name(p.get_ref()) {
                return Err(bad(
                    p.span(),
                    "packages",
                    format!("`{}` is not a Debian package name", p.get_ref()),
                ));
            }
            packages.push(p.get_ref().clone());
        }
        packages.sort();
        packages.dedup();

        let vcpus = match raw.vcpus {
            Some(v) if !(1..=MAX_VCPUS).contains(v.get_ref()) => {
                return Err(bad(
                    v.span(),
                    "vcpus",
                    format!("must be between 1 and {MAX_VCPUS}"),
                ));
            }
            Some(v) => v.into_inner(),
            None => 2,
        };
        let memory = in_range(src, raw.memory, "memory", MEMORY_RANGE, Size(GIB))?;
        let disk = in_range(src, raw.disk, "disk", DISK_RANGE, Size(4 * GIB))?;
        let boot_timeout = match raw.boot_timeout {
            Some(t) => {
                let d = humantime::parse_duration(t.get_ref())
                    .map_err(|e| bad(t.span(), "boot_timeout", format!("{e} (e.g. \"90s\")")))?;
                if d.is_zero() || d > MAX_BOOT_TIMEOUT {
                    return Err(bad(
                        t.span(),
                        "boot_timeout",
                        "must be between 1s and 1h".into(),
                    ));
                }
                d
            }
            // Foreign architectures are fully emulated and boot several times slower.
            None if Some(raw.arch) == Arch::host() => Duration::from_secs(120),
            None => Duration::from_secs(300),
        };
        Ok(QemuBuilder {
            suite: suite.clone(),
            arch: raw.arch,
            packages,
            vcpus,
            memory,
            disk,
            boot_timeout,
        })
    }
}

fn in_range(
    src: &Source,
    value: Option<Spanned<Size>>,
    key: &str,
    (lo, hi): (u64, u64),
    default: Size,
) -> Result<Size, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v.get_ref().0) => Ok(*v.get_ref()),
        Some(v) => Err(src.error_at(
            Some(v.span()),
            Some(key.into()),
            format!("{} is outside {}..={}", v.get_ref(), Size(lo), Size(hi)),
        )),
    }
}

/// Debian package and suite names: lowercase alphanumerics and `+-.`, starting alphanumeric.
/// Checked because these names end up as arguments to mmdebstrap.
fn is_debian_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}
