//! The two images a cache is made of, written by host tools: an empty ext4 filesystem
//! (generation 0) and a flattened copy of a machine's layer over its generation.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// An empty ext4 filesystem of `fs_bytes` in a qcow2 at `out` (a few hundred KiB: the
/// filesystem's unwritten blocks stay unallocated). Its inode tables are left for the guest
/// to initialise lazily, which runner's mount turns off (`noinit_itable`), so that no build
/// spends its time (and the cache its space) zeroing them.
pub fn empty(out: &Path, fs_bytes: u64) -> Result<()> {
    let raw = out.with_extension("raw");
    let f = crate::private::create(&raw)?;
    f.set_len(fs_bytes)
        .ctx(|| format!("cannot size `{}`", raw.display()))?;
    drop(f);
    let made = run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", "runner-cache"])
            .args([
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            ])
            .arg(&raw),
        "mkfs.ext4 (empty cache)",
        out,
    )
    .and_then(|()| {
        run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(out),
            "qemu-img convert (empty cache)",
            out,
        )
    });
    let _ = std::fs::remove_file(&raw);
    made?;
    crate::private::restrict(out, 0o600)
}

/// `layer` and everything below it as one standalone qcow2 at `out`. `-U`: the machine may
/// still hold the layer open (its filesystem frozen, its writes flushed).
pub async fn flatten(layer: &Path, out: &Path) -> Result<()> {
    let what = "qemu-img convert (cache generation)";
    let done = tokio::process::Command::new("qemu-img")
        .args(["convert", "-q", "-U", "-f", "qcow2", "-O", "qcow2"])
        .arg(layer)
        .arg(out)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| format!("cannot run {what} (is qemu-utils installed?)"))?;
    failed(&done, what, out)?;
    crate::private::restrict(out, 0o600)
}

fn run(cmd: &mut Command, what: &str, file: &Path) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .ctx(|| format!("cannot run {what} (are e2fsprogs and qemu-utils installed?)"))?;
    failed(&out, what, file)
}

/// A tool's failure, named by the cache (the key directory) it worked for.
fn failed(out: &std::process::Output, what: &str, file: &Path) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let key = file.parent().and_then(Path::file_name).unwrap_or_default();
    Err(Error::CacheRefused {
        key: key.to_string_lossy().into_owned(),
        problem: format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}
