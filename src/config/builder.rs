//! Builder files (`builders/<name>.toml`): where a machine comes from and what is in it.
//!
//! The backend is read first and decides which schema the rest of the file must match, so an
//! EC2 key in a QEMU builder is reported as unknown rather than silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ec2::{Ec2Builder, RawEc2};
pub use super::qemu::{ImageKind, Init, QemuBuilder, is_debian_name};
pub use super::shape::{MEMORY, Shape, VCPUS};
use super::value;
use super::{Arch, ConfigError, Size, Source};

#[derive(Debug, Clone)]
pub struct Builder {
    pub name: String,
    pub path: PathBuf,
    pub backend: BackendConfig,
    /// `cache = [...]`: what every target of this builder caches unless it says otherwise.
    pub cache: Option<super::CacheDecl>,
}

/// What the file says about the machines, per kind of backend. Only `machine/` (the factory
/// and the backends) looks inside; the rest of runner asks the [`Builder`].
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Qemu(QemuBuilder),
    Ec2(Ec2Builder),
}

#[derive(Deserialize)]
struct BackendOnly {
    backend: Spanned<String>,
    #[serde(default)]
    cache: Vec<Spanned<String>>,
}

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
        let BackendOnly { backend, cache } = src.parse()?;
        let cache = super::cache::declared(&src, &name, (Some(&cache), None, None), None)?;
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
            cache,
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

    /// How long a machine of this builder may live before it ends itself (its dead-man
    /// switch), for a cloud machine.
    pub fn max_lifetime(&self) -> Option<Duration> {
        match &self.backend {
            BackendConfig::Qemu(_) => None,
            BackendConfig::Ec2(e) => Some(e.max_lifetime),
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
                match &q.kind {
                    ImageKind::Cloud(c) => c.source.file_name(),
                    ImageKind::Debian { suite, .. } => suite.clone(),
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
