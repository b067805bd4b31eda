//! `[limits]` of `runner.toml`: caps on what a guest may send back, so that a hostile or
//! runaway build cannot fill the host's disk or memory, and on what a run may spend.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::size::GIB;
use super::value::{self, Example, Range};
use super::{ConfigError, Size, Source};

/// Caps on what a guest may send back; a hostile or runaway build cannot fill the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file: Size,
    pub max_total: Size,
    pub max_files: u64,
    /// A target log keeps its head and tail within this size.
    pub max_log: Size,
    /// A machine's console log keeps its head and tail within this size.
    pub max_console: Size,
    /// How long a finished script's output may stay open before runner stops waiting.
    pub leak_timeout: Duration,
    /// The spend cap of a run, in US dollars: no machine is launched whose worst case
    /// (hourly price × the target's timeout) would take the run past it.
    pub max_cost: Option<f64>,
    /// The same cap in instance-hours of cloud machines, priced or not.
    pub max_instance_hours: Option<f64>,
    /// The most a build cache's generation may hold; its filesystem holds twice this, so a
    /// build that overfills it fails in the guest rather than filling the host.
    pub max_cache: Size,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    max_file_size: Option<Size>,
    max_total_size: Option<Size>,
    max_files: Option<u64>,
    max_log_size: Option<Spanned<Size>>,
    max_console_size: Option<Spanned<Size>>,
    leak_timeout: Option<Spanned<String>>,
    max_cost: Option<Spanned<f64>>,
    max_instance_hours: Option<Spanned<f64>>,
    max_cache_size: Option<Spanned<Size>>,
}

/// What each limit is when `[limits]` does not say (and when there is no project).
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file: DEFAULT_FILE,
            max_total: DEFAULT_TOTAL,
            max_files: DEFAULT_FILES,
            max_log: DEFAULT_LOG,
            max_console: DEFAULT_CONSOLE,
            leak_timeout: DEFAULT_LEAK_TIMEOUT,
            max_cost: None,
            max_instance_hours: None,
            max_cache: DEFAULT_CACHE,
        }
    }
}

const DEFAULT_FILE: Size = Size(4 * GIB);
const DEFAULT_TOTAL: Size = Size(16 * GIB);
const DEFAULT_FILES: u64 = 100_000;
/// Long enough for a daemon's last lines, short enough that nobody waits for it.
const DEFAULT_LEAK_TIMEOUT: Duration = Duration::from_secs(2);
/// 64 MiB of guest output is more than anyone reads; what matters is kept (head and tail).
pub const DEFAULT_LOG: Size = Size(64 << 20);
/// A console log's default cap (`max_console_size`).
pub const DEFAULT_CONSOLE: Size = Size(8 << 20);
/// Enough for a distribution's package downloads and a compiler cache.
const DEFAULT_CACHE: Size = Size(8 * GIB);
const CACHE_SIZE: Range<Size> = Range {
    min: Size(16 << 20),
    max: Size(256 * GIB),
};
const LOG_SIZE: Range<Size> = Range {
    min: Size(64 << 10),
    max: Size(16 * GIB),
};
const LEAK_TIMEOUT: Range<Duration> = Range {
    min: Duration::from_millis(100),
    max: Duration::from_secs(3600),
};

impl Limits {
    pub fn from_raw(src: &Source, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let size =
            |v: Option<&Spanned<Size>>, key, default| value::size(src, v, key, LOG_SIZE, default);
        Ok(Limits {
            max_file: raw.max_file_size.unwrap_or(DEFAULT_FILE),
            max_total: raw.max_total_size.unwrap_or(DEFAULT_TOTAL),
            max_files: raw.max_files.unwrap_or(DEFAULT_FILES),
            max_log: size(raw.max_log_size.as_ref(), "max_log_size", DEFAULT_LOG)?,
            max_console: size(
                raw.max_console_size.as_ref(),
                "max_console_size",
                DEFAULT_CONSOLE,
            )?,
            leak_timeout: value::duration(
                src,
                raw.leak_timeout.as_ref(),
                "leak_timeout",
                (LEAK_TIMEOUT, Example("2s")),
                DEFAULT_LEAK_TIMEOUT,
            )?,
            max_cost: value::amount(src, raw.max_cost.as_ref(), "max_cost", value::COST)?,
            max_instance_hours: value::amount(
                src,
                raw.max_instance_hours.as_ref(),
                "max_instance_hours",
                value::INSTANCE_HOURS,
            )?,
            max_cache: value::size(
                src,
                raw.max_cache_size.as_ref(),
                "max_cache_size",
                CACHE_SIZE,
                DEFAULT_CACHE,
            )?,
        })
    }
}
