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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::command::Accel;
use super::image::{CUSTOMISE, Image, ImageInfo, Recipe};
use super::launch::Start;
use crate::config::{QemuBuilder, Size};
use crate::error::{Error, IoContext, Result};
use crate::guest::{Guest, GuestKeys, quote};
use crate::machine::{MachineSpec, Registry, Report};
use crate::paths::Dirs;

/// How long the sealed machine may take to power off.
const POWER_OFF: Duration = Duration::from_secs(120);

/// What one customisation needs.
pub struct Job<'a> {
    pub dirs: &'a Dirs,
    pub registry: &'a Arc<Registry>,
    pub accel: Accel,
    pub name: &'a str,
    pub builder: &'a QemuBuilder,
    pub report: &'a Report,
}

/// A package manager a cloud image may have, found by what is on its `PATH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Apk,
}

/// The guest command that names the first package manager it has.
const DETECT: &str = "for m in apt-get dnf yum zypper apk; do \
                      command -v $m >/dev/null 2>&1 && { echo $m; exit 0; }; done; exit 1";

impl PackageManager {
    fn from_detected(out: &str) -> Option<PackageManager> {
        Some(match out.trim() {
            "apt-get" => PackageManager::Apt,
            "dnf" => PackageManager::Dnf,
            "yum" => PackageManager::Yum,
            "zypper" => PackageManager::Zypper,
            "apk" => PackageManager::Apk,
            _ => return None,
        })
    }

    /// The command that installs `packages` non-interactively. Names are checked when a
    /// builder is read, but a manifest's recipe (`runner reproduce`) is not a builder file:
    /// they are quoted.
    pub fn install(self, packages: &[String]) -> String {
        let list = packages
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            PackageManager::Apt => format!(
                "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
                 apt-get install -y -q --no-install-recommends {list}"
            ),
            PackageManager::Dnf => format!("dnf install -y -q {list}"),
            PackageManager::Yum => format!("yum install -y -q {list}"),
            PackageManager::Zypper => {
                format!("zypper --non-interactive --quiet install --no-recommends {list}")
            }
            PackageManager::Apk => format!("apk add --no-cache {list}"),
        }
    }
}

/// Makes `out/base.qcow2` from the image file `source` (qcow2 or raw), output to `log`.
pub async fn customise(
    job: &Job<'_>,
    recipe: &Recipe,
    source: &Path,
    out: &Path,
    log: &Path,
) -> Result<()> {
    let (format, size) = image_info(source).await?;
    if size > recipe.disk.0 {
        return Err(Error::other(format!(
            "builder `{}`: disk = \"{}\" is smaller than the image ({}); make it at least that",
            job.name,
            recipe.disk,
            Size(size)
        )));
    }
    let image = Image {
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
        },
    };
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
        context_url: None,
    };
    let keys = GuestKeys::generate()?;
    job.report
        .line(format!("customising {}: booting the image", job.name));
    let mut machine = start
        .cold(&spec, &keys, "cold (customising)".into())
        .await?;
    let guest = machine.connect(&keys).await?;
    let mut log = tokio::fs::File::create(log)
        .await
        .ctx(|| format!("cannot create `{}`", log.display()))?;
    let steps = Steps {
        job,
        guest: guest.as_ref(),
        // Where `bake::derive` keeps the log of a failed customisation.
        log_path: out
            .parent()
            .and_then(Path::parent)
            .unwrap_or(out)
            .join(format!("{}.failed.log", recipe.digest())),
    };
    steps.run(&mut log, recipe).await?;
    log.flush().await.ok();
    // Powering off ends the connection (or the command): either is the expected end.
    let _ = guest
        .exec(
            "poweroff",
            None,
            Box::new(tokio::io::sink()),
            Box::new(tokio::io::sink()),
        )
        .await;
    guest.close().await;
    let deadline = tokio::time::Instant::now() + POWER_OFF;
    while machine.exited().is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::other(format!(
                "customising {}: the machine did not power off within {}s",
                job.name,
                POWER_OFF.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    flatten(&machine.dir.join("overlay.qcow2"), &out.join("base.qcow2")).await?;
    machine.teardown(false).await
}

/// The customising steps over SSH, each one's output into the log.
struct Steps<'a> {
    job: &'a Job<'a>,
    guest: &'a dyn Guest,
    log_path: std::path::PathBuf,
}

impl Steps<'_> {
    async fn run(&self, log: &mut tokio::fs::File, recipe: &Recipe) -> Result<()> {
        // The first boot's own cloud-init work (growing the disk) is done before anything
        // else touches the package manager. A non-zero status only means it logged errors.
        self.step(
            log,
            "waiting for cloud-init",
            "cloud-init status --wait || true",
            None,
        )
        .await?;
        if !recipe.packages.is_empty() {
            let found = self
                .step(log, "finding the package manager", DETECT, None)
                .await?;
            let pm = PackageManager::from_detected(&found).ok_or_else(|| {
                Error::other(format!(
                    "customising {}: the image has none of apt-get, dnf, yum, zypper, apk",
                    self.job.name
                ))
            })?;
            let what = format!("installing {}", recipe.packages.join(" "));
            self.step(log, &what, &pm.install(&recipe.packages), None)
                .await?;
        }
        if let Some(script) = recipe.cloud.as_ref().and_then(|c| c.bake_script.as_ref()) {
            let run = "f=/var/tmp/runner-bake; install -m 700 /dev/stdin $f && $f; s=$?; \
                       rm -f $f; exit $s";
            self.step(log, "running bake_script", run, Some(script.clone()))
                .await?;
        }
        let user = &recipe.cloud.as_ref().expect("a cloud recipe").ssh_user;
        let seal = format!("sh -s -- {}", quote(user));
        self.step(log, "sealing", &seal, Some(CUSTOMISE.to_owned()))
            .await?;
        Ok(())
    }

    /// Runs `command` (as root), its output into the log; returns its stdout.
    async fn step(
        &self,
        log: &mut tokio::fs::File,
        what: &str,
        command: &str,
        stdin: Option<String>,
    ) -> Result<String> {
        self.job
            .report
            .line(format!("customising {}: {what}", self.job.name));
        log.write_all(format!("== {what}\n$ {command}\n").as_bytes())
            .await
            .ok();
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
        let input = stdin.map(|s| Box::new(std::io::Cursor::new(s.into_bytes())) as _);
        let run = self
            .guest
            .exec(command, input, Box::new(out_w), Box::new(err_w));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (status, _, _) = tokio::join!(
            run,
            out_r.read_to_end(&mut out),
            err_r.read_to_end(&mut err)
        );
        log.write_all(&out).await.ok();
        log.write_all(&err).await.ok();
        let status = status?;
        if !status.success() {
            log.flush().await.ok();
            return Err(Error::Tool {
                program: format!("customising {}: {what}", self.job.name),
                status: format!(
                    "{status}; last lines:\n{}",
                    tail(&[out.as_slice(), err.as_slice()].concat(), 15)
                ),
                log: self.log_path.clone(),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The image file's format and virtual size, as `qemu-img info` reads them.
async fn image_info(path: &Path) -> Result<(String, u64)> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
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
    Ok((format, v["virtual-size"].as_u64().unwrap_or(0)))
}

/// The machine's overlay and the image under it, as one standalone qcow2.
async fn flatten(overlay: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(overlay)
        .arg(dest)
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

#[cfg(test)]
mod tests {
    use super::PackageManager::{self, *};

    #[test]
    fn install_commands_per_package_manager() {
        let pkgs = ["gcc".to_owned(), "make".to_owned()];
        assert_eq!(
            Apt.install(&pkgs),
            "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
             apt-get install -y -q --no-install-recommends 'gcc' 'make'"
        );
        assert_eq!(Dnf.install(&pkgs), "dnf install -y -q 'gcc' 'make'");
        assert_eq!(Yum.install(&pkgs), "yum install -y -q 'gcc' 'make'");
        assert_eq!(
            Zypper.install(&pkgs),
            "zypper --non-interactive --quiet install --no-recommends 'gcc' 'make'"
        );
        assert_eq!(Apk.install(&pkgs), "apk add --no-cache 'gcc' 'make'");
        assert_eq!(
            PackageManager::from_detected("zypper\n"),
            Some(PackageManager::Zypper)
        );
        assert_eq!(PackageManager::from_detected(""), None);
    }
}
