//! A cloud image made into a base image, once per recipe: booted as a machine is (firmware,
//! NoCloud seed, pinned keys), its disk grown to the builder's `disk` by cloud-init's first
//! boot, `packages` installed with the image's own package manager, the `bake_script` run,
//! then sealed (see `image/guest/customise.sh`) and powered off. Its disk, flattened, is the
//! derived image every build machine's overlay sits on.
//!
//! Everything runs over SSH as a build does, so the same keys, host-key pin and teardown
//! apply; a failure or a dropped future tears the machine down like any other.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::command::Accel;
use super::image::bake::Made;
use super::image::{CUSTOMISE, CloudRecipe, Image, ImageInfo, Recipe, firmware};
use super::launch::Start;
use super::packages::{DETECT, PackageManager};
use crate::config::{Firmware, QemuBuilder, Size};
use crate::error::{Error, IoContext, Result};
use crate::events::ImageStep;
use crate::guest::{Guest, GuestKeys, quote};
use crate::logs::LogSink;
use crate::machine::{MachineSpec, Registry, Report};
use crate::paths::Dirs;

/// How long the sealed machine may take to power off.
const POWER_OFF: Duration = Duration::from_secs(120);
/// How long waiting for cloud-init, finding the package manager and sealing may take.
const CLOUD_INIT: Duration = Duration::from_secs(15 * 60);
/// How long installing the packages, or the bake script, may take (a hung step must not
/// hang the build: the image phase is outside the targets' timeouts).
const STEP: Duration = Duration::from_secs(60 * 60);
/// Runs the bake script from stdin as an executable file (its shebang decides the shell).
const BAKE: &str = "f=/var/tmp/runner-bake; install -m 700 /dev/stdin $f && $f; s=$?; \
                    rm -f $f; exit $s";

/// What one customisation needs.
pub struct Job<'a> {
    pub dirs: &'a Dirs,
    pub registry: &'a Arc<Registry>,
    pub accel: Accel,
    pub name: &'a str,
    pub builder: &'a QemuBuilder,
    /// The cloud image of the recipe being made.
    pub cloud: &'a CloudRecipe,
    pub report: &'a Report,
}

/// Makes `out/base.qcow2` from the image file `source` (qcow2 or raw), output to `log`.
pub async fn customise(
    job: &Job<'_>,
    recipe: &Recipe,
    source: &Path,
    out: &Path,
    log: &Path,
) -> Result<Made> {
    let image = staging(job, recipe, source, out).await?;
    let start = Start {
        dirs: job.dirs,
        registry: job.registry,
        image: &image,
        accel: job.accel,
        shape: job.builder.shape,
    };
    let spec = MachineSpec {
        label: format!("customise-{}", job.name),
        shape: Some(job.builder.shape),
        // The first boot of a cloud image does more (grows its disk, makes the user).
        boot_timeout: job.builder.boot_timeout * 2,
        disks: vec![],
        cache: None,
        context_url: None,
        console_limit: crate::config::project::DEFAULT_CONSOLE.0,
        waits: Default::default(),
        reclaimed: 0,
    };
    let keys = GuestKeys::generate()?;
    job.report.step(
        ImageStep::Boot,
        format!(
            "customising {}: booting the image ({})",
            job.name,
            firmware_line(job.cloud.firmware, image.firmware())
        ),
    );
    let mut machine = start
        .cold(&spec, &keys, "cold (customising)".into())
        .await?;
    let guest = machine.connect(&keys).await?;
    let steps = Steps {
        job,
        guest: guest.as_ref(),
        log: LogSink::create(log, super::image::LOG_LIMIT, |_| {})
            .ctx(|| format!("cannot create `{}`", log.display()))?,
        log_path: log.to_owned(),
        // Where `bake::derive` keeps the log of a failed customisation.
        kept_log: out
            .parent()
            .and_then(Path::parent)
            .unwrap_or(out)
            .join(format!("{}.failed.log", recipe.digest())),
    };
    let ran = steps.run(recipe).await;
    steps.log.finish();
    ran?;
    power_off(job, &mut machine, guest).await?;
    flatten(&machine.dir.join("overlay.qcow2"), &out.join("base.qcow2")).await?;
    machine.teardown(false).await?;
    Ok(Made {
        firmware: image.info.firmware,
    })
}

/// `firmware uefi` as declared, `firmware auto: uefi` as read from the image.
fn firmware_line(declared: Firmware, booted: Firmware) -> String {
    match declared {
        Firmware::Auto => format!("firmware auto: {}", booted.as_str()),
        _ => format!("firmware {}", booted.as_str()),
    }
}

/// The image as a machine boots it while it is customised: the downloaded file under the
/// machine's overlay (grown to the recipe's disk), in the scratch directory `out`.
async fn staging(job: &Job<'_>, recipe: &Recipe, source: &Path, out: &Path) -> Result<Image> {
    let (format, size) = image_info(source).await?;
    let firmware = firmware::resolve(job.cloud.firmware, recipe.arch, source, &format).await?;
    if size > recipe.disk.0 {
        return Err(Error::Bake {
            builder: job.name.to_owned(),
            problem: format!(
                "disk = \"{}\" is smaller than the image ({}); make it at least that",
                recipe.disk,
                Size(size)
            ),
        });
    }
    Ok(Image {
        digest: recipe.digest(),
        arch: recipe.arch,
        dir: out.to_owned(),
        qcow2: source.to_owned(),
        format,
        kernel: Default::default(),
        initrd: Default::default(),
        info: ImageInfo {
            builder: job.name.to_owned(),
            recipe: recipe.clone(),
            base_sha256: String::new(),
            created_unix: crate::host::now_unix(),
            bake_seconds: 0.0,
            firmware: Some(firmware.firmware),
        },
        choice: Some(firmware),
    })
}

/// Powers the sealed machine off and waits until QEMU has exited.
async fn power_off(
    job: &Job<'_>,
    machine: &mut crate::machine::Machine,
    guest: Box<dyn Guest>,
) -> Result<()> {
    // Powering off ends the connection (or the command): either is the expected end.
    let sink = || Box::new(tokio::io::sink());
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        guest.exec("poweroff", None, sink(), sink()),
    )
    .await;
    guest.close().await;
    let deadline = tokio::time::Instant::now() + POWER_OFF;
    while machine.exited().is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Bake {
                builder: job.name.to_owned(),
                problem: format!(
                    "customising: the machine did not power off within {}s",
                    POWER_OFF.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The customising steps over SSH, each one's output streamed into the log.
struct Steps<'a> {
    job: &'a Job<'a>,
    guest: &'a dyn Guest,
    /// Capped like a target log: the guest decides how much its package manager prints.
    log: LogSink,
    log_path: std::path::PathBuf,
    kept_log: std::path::PathBuf,
}

impl Steps<'_> {
    async fn run(&self, recipe: &Recipe) -> Result<()> {
        // The first boot's own cloud-init work (growing the disk) is done before anything
        // else touches the package manager. A non-zero status only means it logged errors.
        let wait = "cloud-init status --wait || true";
        self.step(
            ImageStep::CloudInit,
            "waiting for cloud-init",
            wait,
            None,
            CLOUD_INIT,
        )
        .await?;
        if !recipe.packages.is_empty() {
            let found = self.detect().await?;
            let pm = PackageManager::from_detected(&found).ok_or_else(|| Error::Bake {
                builder: self.job.name.to_owned(),
                problem: "customising: the image has none of apt-get, dnf, yum, zypper, apk".into(),
            })?;
            let what = format!("installing {}", recipe.packages.join(" "));
            self.step(
                ImageStep::Packages,
                &what,
                &pm.install(&recipe.packages),
                None,
                STEP,
            )
            .await?;
        }
        if let Some(script) = &self.job.cloud.bake_script {
            let script = Some(script.clone());
            self.step(
                ImageStep::BakeScript,
                "running bake_script",
                BAKE,
                script,
                STEP,
            )
            .await?;
        }
        let user = &self.job.cloud.ssh_user;
        let seal = format!("sh -s -- {}", quote(user));
        let sealer = Some(CUSTOMISE.to_owned());
        self.step(ImageStep::Seal, "sealing", &seal, sealer, CLOUD_INIT)
            .await
    }

    /// The package manager's name, from the little the guest prints for it.
    async fn detect(&self) -> Result<String> {
        let what = "finding the package manager";
        self.line(ImageStep::Packages, what).await;
        let (w, r) = tokio::io::duplex(4096);
        let run = self
            .guest
            .exec(DETECT, None, Box::new(w), Box::new(self.log.clone()));
        let mut found = Vec::new();
        let read = async {
            use tokio::io::AsyncReadExt;
            let _ = r.take(4096).read_to_end(&mut found).await;
        };
        let (status, ()) = tokio::time::timeout(CLOUD_INIT, async { tokio::join!(run, read) })
            .await
            .map_err(|_| self.timed_out(what, CLOUD_INIT))?;
        match status? {
            s if s.success() => Ok(String::from_utf8_lossy(&found).into_owned()),
            s => Err(self.failed(what, &s.to_string())),
        }
    }

    /// Runs `command` (as root) within `limit`, its output into the log.
    async fn step(
        &self,
        kind: ImageStep,
        what: &str,
        command: &str,
        stdin: Option<String>,
        limit: Duration,
    ) -> Result<()> {
        self.line(kind, what).await;
        self.log
            .clone()
            .write_all(format!("$ {command}\n").as_bytes())
            .await
            .ok();
        let input = stdin.map(|s| Box::new(std::io::Cursor::new(s.into_bytes())) as _);
        let (out, err) = (self.log.clone(), self.log.clone());
        let run = self
            .guest
            .exec(command, input, Box::new(out), Box::new(err));
        let status = tokio::time::timeout(limit, run)
            .await
            .map_err(|_| self.timed_out(what, limit))??;
        match status.success() {
            true => Ok(()),
            false => Err(self.failed(what, &status.to_string())),
        }
    }

    async fn line(&self, step: ImageStep, what: &str) {
        self.job
            .report
            .step(step, format!("customising {}: {what}", self.job.name));
        let line = format!("== {what}\n");
        self.log.clone().write_all(line.as_bytes()).await.ok();
    }

    fn failed(&self, what: &str, status: &str) -> Error {
        Error::Tool {
            program: format!("customising {}: {what}", self.job.name),
            status: format!(
                "{status}; last lines:\n{}",
                crate::logs::tail(&self.log_path, 15)
            ),
            log: self.kept_log.clone(),
        }
    }

    fn timed_out(&self, what: &str, limit: Duration) -> Error {
        self.failed(
            what,
            &format!("did not finish within {} minutes", limit.as_secs() / 60),
        )
    }
}

/// The image file's format and virtual size, as `qemu-img info` reads them.
async fn image_info(path: &Path) -> Result<(String, u64)> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img` (is qemu-utils installed?)")?;
    let bad = |problem: String| Error::BadFile {
        path: path.to_owned(),
        problem,
    };
    if !out.status.success() {
        return Err(bad(format!(
            "not a disk image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(format!("qemu-img info: {e}")))?;
    let format = v["format"].as_str().unwrap_or_default().to_owned();
    if !matches!(format.as_str(), "qcow2" | "raw") {
        return Err(bad(format!(
            "a `{format}` image; runner boots qcow2 or raw cloud images (unpack archives first)"
        )));
    }
    // A qcow2 may name other files to read through (a backing file, an external data file):
    // a downloaded one could so hand the guest any file of this host. A cloud image is whole.
    let data_file = &v["format-specific"]["data"]["data-file"];
    if !v["backing-filename"].is_null() || !data_file.is_null() {
        return Err(bad(
            "the image names a backing or data file; a cloud image must be self-contained".into(),
        ));
    }
    Ok((format, v["virtual-size"].as_u64().unwrap_or(0)))
}

/// The machine's overlay and the image under it, as one standalone qcow2.
async fn flatten(overlay: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(overlay)
        .arg(dest)
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| "cannot run `qemu-img convert`")?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: "qemu-img convert".into(),
            status: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            log: dest.to_owned(),
        });
    }
    Ok(())
}
