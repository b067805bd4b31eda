//! Log files kept for post-mortems: what failed should be readable without re-running.

use std::path::Path;

/// The last `n` lines of a log, for error messages; empty if the file cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
