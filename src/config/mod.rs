//! Loading configuration files. Every error names the file, the line and the key, because a
//! typo in a builder should cost the user seconds, not a VM boot.

mod arch;
pub mod builder;
pub mod cache;
pub mod cloud;
pub mod ec2;
mod limits;
pub mod names;
pub mod project;
pub mod qemu;
pub mod shape;
pub mod size;
mod url;
pub mod value;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use arch::Arch;
pub use builder::{BackendConfig, Builder, ImageKind, Init, QemuBuilder, Shape};
pub use cache::{CacheDecl, CacheTransfer};
pub use cloud::{CloudImage, Firmware, ImageSource};
pub use ec2::{Address, Ami, Ec2Builder};
pub use limits::Limits;
pub use project::{Project, Target, TargetError, Transfer};
pub use size::Size;
pub use url::S3Url;

/// A configuration problem located in its source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the problem is not tied to a place (e.g. the file is unreadable).
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A TOML document kept with its text, so later validation can point at lines.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(Source {
            path: path.to_owned(),
            text,
        })
    }

    /// Deserializes the whole document, turning serde's message and span into a located error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let key = quoted_field(&message);
            self.error_at(e.span(), key, message)
        })
    }

    /// An error at `span`; the key is taken from `key` or else from the `key = ` on that line.
    pub fn error_at(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span
            .map(|s| line_col(&self.text, s.start))
            .unwrap_or((0, 0));
        let key = key.or_else(|| {
            let text = self.text.lines().nth(line.checked_sub(1)?)?;
            let (lhs, _) = text.split_once('=')?;
            let lhs = lhs.trim().trim_matches('"');
            (!lhs.is_empty() && !lhs.starts_with('[')).then(|| lhs.to_owned())
        });
        ConfigError {
            path: self.path.clone(),
            line,
            column,
            key,
            message: message.into(),
        }
    }
}

/// serde names the offending field in backticks for unknown/missing/duplicate fields.
fn quoted_field(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn finds_field_in_serde_message() {
        assert_eq!(
            quoted_field("unknown field `memroy`, expected one of `a`").as_deref(),
            Some("memroy")
        );
        assert_eq!(quoted_field("invalid type"), None);
    }
}
