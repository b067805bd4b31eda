//! The one place where values from config files and flags are parsed and range-checked:
//! durations, sizes and counts. Builders, targets, overrides and command-line flags all go
//! through these, so a value means the same and is refused the same wherever it is written.

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

/// How long a target (or a reproduction) may take, boot to publish.
pub const TARGET_TIMEOUT: Range<Duration> = Range {
    min: Duration::from_secs(1),
    max: Duration::from_secs(48 * 3600),
};

/// How many targets may run at once (`-j`).
pub const JOBS: Range<usize> = Range { min: 1, max: 1024 };

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
    parse_duration(t.get_ref(), limits, example)
        .map_err(|msg| src.error_at(Some(t.span()), Some(key.into()), msg))
}

/// `text` as a duration within `limits`, or what is wrong with it.
fn parse_duration(
    text: &str,
    limits: Range<Duration>,
    example: Example,
) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. \"{}\")", example.0))?;
    if d < limits.min || d > limits.max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(limits.min),
            humantime::format_duration(limits.max)
        ));
    }
    Ok(d)
}

/// `--timeout`, checked as a target's `timeout` is.
pub fn cli_timeout(text: &str) -> Result<Duration, String> {
    parse_duration(text, TARGET_TIMEOUT, Example("20m"))
}

/// `-j`, within [`JOBS`].
pub fn cli_jobs(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if !(JOBS.min..=JOBS.max).contains(&n) {
        return Err(format!("must be between {} and {}", JOBS.min, JOBS.max));
    }
    Ok(n)
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

/// A spend cap in US dollars (`max_cost`, `--max-cost`): above zero, and finite.
pub const COST: Range<f64> = Range {
    min: 0.0001,
    max: 1_000_000.0,
};

/// A cap in instance-hours (`max_instance_hours`).
pub const INSTANCE_HOURS: Range<f64> = Range {
    min: 0.01,
    max: 1_000_000.0,
};

/// What one instance-hour costs, in US dollars (`hourly_price`): zero is allowed (a free
/// tier), NaN and infinity are not.
pub const PRICE: Range<f64> = Range {
    min: 0.0,
    max: 10_000.0,
};

/// An optional amount (dollars, hours) within `limits`.
pub fn amount(
    src: &Source,
    v: Option<&Spanned<f64>>,
    key: &str,
    limits: Range<f64>,
) -> Result<Option<f64>, ConfigError> {
    v.map(|n| count(src, Some(n), key, limits, 0.0)).transpose()
}

/// `--max-cost`, within [`COST`], with or without a leading `$`.
pub fn cli_cost(text: &str) -> Result<f64, String> {
    let n: f64 = text
        .trim_start_matches('$')
        .parse()
        .map_err(|e| format!("{e}"))?;
    if !(COST.min..=COST.max).contains(&n) {
        return Err(format!("must be between {} and {}", COST.min, COST.max));
    }
    Ok(n)
}
