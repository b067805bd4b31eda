//! How a download shows its progress: a byte bar on a terminal, a line per quarter elsewhere
//! (a build's progress line, CI logs).

use indicatif::{ProgressBar, ProgressStyle};

use crate::events::ImageStep;
use crate::machine::Report;

/// A byte bar on a terminal; otherwise a line per quarter.
pub(super) struct Progress<'a> {
    bar: ProgressBar,
    report: &'a Report,
    builder: &'a str,
    total: Option<u64>,
    quarter: std::cell::Cell<u64>,
}

impl<'a> Progress<'a> {
    pub(super) fn new(
        report: &'a Report,
        builder: &'a str,
        total: Option<u64>,
        from: u64,
    ) -> Progress<'a> {
        let bar = if matches!(report, Report::Spinner) {
            let b = ProgressBar::new(total.unwrap_or(0));
            b.set_style(
                ProgressStyle::with_template(
                    "downloading {prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template"),
            );
            b.set_prefix(builder.to_owned());
            b.set_position(from);
            b
        } else {
            ProgressBar::hidden()
        };
        report.step(
            ImageStep::Download,
            format!(
                "downloading {builder}: {}{}",
                total.map_or("size unknown".into(), |t| format!("{} MiB", t >> 20)),
                if from > 0 {
                    format!(", resuming at {} MiB", from >> 20)
                } else {
                    String::new()
                }
            ),
        );
        Progress {
            bar,
            report,
            builder,
            total,
            quarter: std::cell::Cell::new(from * 4 / total.unwrap_or(u64::MAX).max(1)),
        }
    }

    pub(super) fn at(&self, n: u64) {
        self.bar.set_position(n);
        if let Some(t) = self.total.filter(|t| *t > 0) {
            let q = n * 4 / t;
            if q > self.quarter.get() && q < 4 {
                self.quarter.set(q);
                self.report
                    .line(format!("downloading {}: {}%", self.builder, q * 25));
            }
        }
    }

    pub(super) fn done(&self, n: u64) {
        self.bar.finish_and_clear();
        self.report.step(
            ImageStep::Verify,
            format!("downloading {}: {} MiB, verifying", self.builder, n >> 20),
        );
    }
}
