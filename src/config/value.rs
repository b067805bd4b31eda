//! The one place where values from config files are parsed and range-checked: durations,
//! sizes and counts. Builders, targets and overrides all go through these, so a value means
//! the same and is refused the same wherever it is written.

use std::time::Duration;

use toml::Spanned;

use super::{ConfigError, Size, Source};

/// An inclusive range, firecracker-style: a value outside it is a typo, not a wish.
#[derive(Debug, Clone, Copy)]
pub struct Range<T> {
    pub min: T,
    pub max: T,
}

/// How long any machine may take to become reachable.
pub const BOOT_TIMEOUT: Range<Duration> = Range {
    min: Duration::from_secs(1),
    max: Duration::from_secs(3600),
};

/// How a duration is written, for messages: `"90s"`, `"20m"`, `"2h"`.
pub struct Example(pub &'static str);

/// `v` parsed as a duration, between `limits`; `default` when absent.
pub fn duration(
    src: &Source,
    v: Option<&Spanned<String>>,
    key: &str,
    (limits, example): (Range<Duration>, Example),
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(t) = v else { return Ok(default) };
    let bad = |msg: String| src.error_at(Some(t.span()), Some(key.into()), msg);
    let d = humantime::parse_duration(t.get_ref())
        .map_err(|e| bad(format!("{e} (e.g. \"{}\")", example.0)))?;
    if d < limits.min || d > limits.max {
        return Err(bad(format!(
            "must be between {} and {}",
            humantime::format_duration(limits.min),
            humantime::format_duration(limits.max)
        )));
    }
    Ok(d)
}

/// A size within `limits`; `default` when absent.
pub fn size(
    src: &Source,
    v: Option<&Spanned<Size>>,
    key: &str,
    limits: Range<Size>,
    default: Size,
) -> Result<Size, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if (limits.min..=limits.max).contains(s.get_ref()) => Ok(*s.get_ref()),
        Some(s) => Err(src.error_at(
            Some(s.span()),
            Some(key.into()),
            format!("{} is outside {}..={}", s.get_ref(), limits.min, limits.max),
        )),
    }
}

/// A count within `limits`; `default` when absent.
pub fn count<T>(
    src: &Source,
    v: Option<&Spanned<T>>,
    key: &str,
    limits: Range<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: Copy + PartialOrd + std::fmt::Display,
{
    match v {
        None => Ok(default),
        Some(n) if (limits.min..=limits.max).contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => Err(src.error_at(
            Some(n.span()),
            Some(key.into()),
            format!("must be between {} and {}", limits.min, limits.max),
        )),
    }
}
