//! Baking an image: mmdebstrap a rootfs, extract a kernel, build an initrd, make a qcow2.
//! The steps are the embedded `guest/bake.sh` (a pipeline of external tools reads best as
//! shell); this module runs it safely, shows its progress and keeps its log.
//!
//! Safety: the script runs in a private mount namespace (`unshare -m`), so the mounts that
//! mmdebstrap makes inside the rootfs vanish with the process even if it is killed; only then
//! is the scratch directory removed, with nothing mounted below it.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{GUEST_FILES, ImageInfo, Recipe};
use crate::config::{Firmware, Init};
use crate::digest::sha256_file;
use crate::error::{Error, IoContext, Result, joined};
use crate::events::ImageStep;
use crate::logs::LogSink;
use crate::machine::Report;

#[derive(Clone, Default)]
pub struct Options {
    pub mirror: Option<String>,
    /// Rebake even if the cache has the image.
    pub force: bool,
    /// How bake steps are shown.
    pub report: Report,
}

/// Kills the whole process group on drop: a cancelled bake must not leave mmdebstrap running.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// What of a Debian recipe the bake script is told (the rest is in the recipe).
#[derive(Clone, Copy)]
pub struct Debian<'a> {
    pub suite: &'a str,
    pub init: Init,
}

pub async fn bake(
    images: &Path,
    builder: &str,
    recipe: &Recipe,
    debian: Debian<'_>,
    digest: &str,
    opts: &Options,
) -> Result<()> {
    let mirror = super::mirror::resolve(opts.mirror.as_deref())?;
    let failed_log = images.join(format!("{digest}.failed.log"));
    derive(images, builder, recipe, digest, |out, log| async move {
        let status = run_script(builder, recipe, debian, &mirror, &out, &log, opts).await?;
        if status.success() {
            return Ok(Made::default());
        }
        Err(Error::Tool {
            program: format!("bake of {builder}"),
            status: format!("{status}; last lines:\n{}", crate::logs::tail(&log, 15)),
            log: failed_log,
        })
    })
    .await
}

/// What a maker learnt about the image it made, for its `image.json`.
#[derive(Debug, Default)]
pub struct Made {
    /// The firmware a cloud image was found to boot with.
    pub firmware: Option<Firmware>,
}

/// An image made by `make(out, log)` in a scratch directory, then recorded and moved into
/// place; on failure its log is kept as `<digest>.failed.log`. The bake script is one maker,
/// a cloud image's customisation the other.
pub async fn derive<F, Fut>(
    images: &Path,
    builder: &str,
    recipe: &Recipe,
    digest: &str,
    make: F,
) -> Result<()>
where
    F: FnOnce(std::path::PathBuf, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<Made>>,
{
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".bake-{}-", &digest[..12]))
        .tempdir_in(images)
        .ctx(|| {
            format!(
                "cannot create a scratch directory in `{}`",
                images.display()
            )
        })?;
    let out = scratch.path().join("out");
    let log_path = scratch.path().join("bake.log");
    std::fs::create_dir_all(&out).ctx(|| format!("cannot create `{}`", out.display()))?;
    let made = match make(out.clone(), log_path.clone()).await {
        Ok(made) => made,
        Err(e) => {
            let kept = images.join(format!("{digest}.failed.log"));
            let _ = std::fs::copy(&log_path, &kept);
            return Err(e);
        }
    };
    let record = Record {
        builder,
        recipe,
        made,
        started,
    };
    finish(images, digest, &out, &log_path, record).await
}

/// What `image.json` is made of, besides the image's own hash.
struct Record<'a> {
    builder: &'a str,
    recipe: &'a Recipe,
    made: Made,
    started: Instant,
}

/// Records a made image (`image.json`, its log) and moves it into place.
async fn finish(
    images: &Path,
    digest: &str,
    out: &Path,
    log_path: &Path,
    record: Record<'_>,
) -> Result<()> {
    let qcow2 = out.join("base.qcow2");
    let base_sha256 = joined(
        "hashing the image",
        tokio::task::spawn_blocking(move || sha256_file(&qcow2)),
    )
    .await?;
    let info = ImageInfo {
        builder: record.builder.to_owned(),
        recipe: record.recipe.clone(),
        base_sha256,
        created_unix: crate::host::now_unix(),
        bake_seconds: record.started.elapsed().as_secs_f64(),
        firmware: record.made.firmware,
    };
    std::fs::write(
        out.join("image.json"),
        serde_json::to_vec_pretty(&info).expect("serializes"),
    )
    .ctx(|| "cannot write image.json")?;
    std::fs::rename(log_path, out.join("bake.log")).ctx(|| "cannot keep bake.log")?;
    install(images, digest, out)
}

/// Runs the embedded bake script into `out` in a private mount namespace, its output into
/// `log_path` and its steps to `opts.report`.
async fn run_script(
    builder: &str,
    recipe: &Recipe,
    debian: Debian<'_>,
    mirror: &str,
    out: &Path,
    log_path: &Path,
    opts: &Options,
) -> Result<std::process::ExitStatus> {
    let scripts = tempfile::tempdir().ctx(|| "cannot create a temporary directory")?;
    for (name, text) in GUEST_FILES {
        std::fs::write(scripts.path().join(name), text).ctx(|| format!("cannot write `{name}`"))?;
    }
    // Capped like a target log: a bake's output is mostly the guest system's package scripts.
    let mut log = LogSink::create(log_path, super::LOG_LIMIT, |_| {})
        .ctx(|| format!("cannot create `{}`", log_path.display()))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "bash"])
        .arg(scripts.path().join("bake.sh"))
        .args([debian.suite, recipe.arch.debian(), mirror])
        .arg(out)
        .args(&recipe.packages)
        .env("RUNNER_IMAGE_SIZE", recipe.disk.to_string())
        .env("RUNNER_INIT_KIND", debian.init.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .ctx(|| "cannot start the bake (needs bash and util-linux `unshare`)")?;
    let _group = GroupGuard(child.id().map(|p| p as i32));
    let bar = progress(matches!(opts.report, Report::Spinner), builder);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = futures_lines(stdout, stderr);
    while let Some(line) = lines.recv().await {
        log.write_all(format!("{line}\n").as_bytes()).await.ok();
        if let Some(step) = line.strip_prefix("== ").filter(|s| !s.ends_with(" s")) {
            bar.set_message(step.to_owned());
            let line = format!("baking {builder}: {step}");
            opts.report.step(ImageStep::Bake, line);
        }
    }
    let status = child.wait().await.ctx(|| "cannot wait for the bake")?;
    log.finish();
    bar.finish_and_clear();
    Ok(status)
}

/// Moves a finished image into place under its digest, replacing an older one.
fn install(images: &Path, digest: &str, out: &Path) -> Result<()> {
    let dest = images.join(digest);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).ctx(|| format!("cannot replace `{}`", dest.display()))?;
    }
    std::fs::rename(out, &dest).ctx(|| format!("cannot move the image to `{}`", dest.display()))?;
    let _ = std::fs::remove_file(images.join(format!("{digest}.failed.log")));
    Ok(())
}

fn progress(interactive: bool, builder: &str) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} baking {prefix} [{elapsed}] {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(builder.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Merges two pipes into one stream of lines, in arrival order.
fn futures_lines(
    out: tokio::process::ChildStdout,
    err: tokio::process::ChildStderr,
) -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let tx2 = tx.clone();
    tokio::spawn(async move {
        let mut l = BufReader::new(out).lines();
        while let Ok(Some(line)) = l.next_line().await {
            let _ = tx.send(line).await;
        }
    });
    tokio::spawn(async move {
        let mut l = BufReader::new(err).lines();
        while let Ok(Some(line)) = l.next_line().await {
            let _ = tx2.send(line).await;
        }
    });
    rx
}
