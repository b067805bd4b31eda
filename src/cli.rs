//! Command-line interface: parse, build the environment, dispatch, print the cause chain,
//! exit with a meaningful code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Builder;
use crate::error::{Result, chain};
use crate::image::{Cache, Provenance, bake};
use crate::launch::{Env, cancellable};
use crate::machine::accel::AccelChoice;
use crate::paths::Dirs;
use crate::progress::Format;
use crate::signals::Shutdown;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Disposable build VMs: boot, build, collect, tear down"
)]
struct Cli {
    /// Project directory (holds runner.toml, builders/, provision-scripts/).
    #[arg(short = 'C', long, global = true, default_value = ".")]
    project: PathBuf,
    /// Image cache directory.
    #[arg(long, global = true, env = "RUNNER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// State directory (live machines, logs).
    #[arg(long, global = true, env = "RUNNER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Hardware acceleration: auto probes KVM and falls back to TCG if guests hang.
    #[arg(long, global = true, env = "RUNNER_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Debian mirror to bake from (default: the host's apt configuration).
    #[arg(long, global = true, env = "RUNNER_MIRROR")]
    mirror: Option<String>,
    /// More logging (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build targets from runner.toml, each in a fresh machine.
    Build {
        /// Target names or globs (`hello-*`); all targets if none.
        targets: Vec<String>,
        /// Build every target.
        #[arg(long)]
        all: bool,
        /// How many targets at once (default: by host CPUs and memory).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Keep launching targets after one fails.
        #[arg(long)]
        keep_going: bool,
        /// Leave a failed target's machine running and print how to ssh into it.
        #[arg(long)]
        keep_failed: bool,
        /// Build even if a published build has the same inputs digest (no cache hit).
        #[arg(long)]
        force: bool,
        /// Publish to S3 (`s3://bucket/prefix`) instead of the configured store.
        #[arg(long)]
        upload: Option<String>,
        /// `human` (progress on stderr) or `json` (one event per line on stdout).
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        message_format: String,
    },
    /// Rebuild from a manifest in a fresh machine and compare every artifact.
    Reproduce {
        /// The manifest.json of a published build.
        manifest: PathBuf,
        /// The build context to use; it must match the manifest's context digest.
        #[arg(long)]
        context: PathBuf,
        /// Where the rebuild and reports go (default: under the state dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Deadline for the rebuild.
        #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Published artifacts of a target: list the newest build, or download and verify it.
    #[command(subcommand)]
    Artifacts(ArtifactsCmd),
    /// Show targets and builders.
    List,
    /// Validate runner.toml and builders/ without starting anything.
    Check,
    /// Base images: bake, list, remove.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Disposable machines, used directly.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Find machines and bakes left by a runner that died; remove them with --force.
    Gc {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ArtifactsCmd {
    /// Show the newest published build of a target: its artifacts, sizes, sha256 and URIs.
    Ls {
        target: String,
        /// Look in this S3 location instead of the configured store.
        #[arg(long)]
        upload: Option<String>,
    },
    /// Download the newest published build of a target and verify every sha256.
    Get {
        target: String,
        #[arg(long)]
        upload: Option<String>,
        /// Destination directory (default: ./<target>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Bake the image of each builder (a cache hit if the recipe is unchanged).
    Build {
        #[arg(required = true)]
        builders: Vec<String>,
        /// Rebake even if cached.
        #[arg(long)]
        force: bool,
    },
    /// Show cached images.
    List,
    /// Remove cached images by builder name or digest prefix.
    Rm {
        #[arg(required = true)]
        what: Vec<String>,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot a fresh machine, run a command with live output, tear down; exits with its status.
    Run {
        builder: String,
        /// The command line, run by the guest's shell.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Boot a fresh machine and open an interactive shell in it; tear down on exit.
    Shell { builder: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,russh=warn",
        _ => "debug,russh=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = rt.block_on(async {
        let shutdown = match Shutdown::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return 1;
            }
        };
        match dispatch(cli, shutdown.clone()).await {
            Ok(code) => shutdown.exit_code().unwrap_or(code),
            Err(e) => {
                eprintln!("{}", chain(&e));
                shutdown.exit_code().unwrap_or(1)
            }
        }
    });
    // Teardowns started from `Drop` (cancelled EC2 launches) run on threads of their own;
    // the process waits for them, or instances would outlive their runner.
    crate::machine::ec2::join_teardowns();
    // Exit without waiting for blocking readers (a forwarded stdin) to notice.
    std::process::exit(code)
}

async fn dispatch(cli: Cli, shutdown: Shutdown) -> Result<i32> {
    let interactive = std::io::stderr().is_terminal();
    let env = Env {
        project: cli.project,
        dirs: Dirs::resolve(cli.cache_dir, cli.state_dir),
        accel: cli.accel,
        bake: bake::Options {
            mirror: cli.mirror,
            force: false,
            report: if interactive {
                bake::Report::Spinner
            } else {
                bake::Report::Lines
            },
        },
        shutdown,
    };
    match cli.command {
        Command::Build {
            targets,
            all,
            jobs,
            keep_going,
            keep_failed,
            force,
            upload,
            message_format,
        } => {
            let args = crate::build::BuildArgs {
                targets,
                all,
                jobs,
                keep_going,
                keep_failed,
                force,
                upload,
                format: if message_format == "json" {
                    Format::Json
                } else {
                    Format::Human
                },
                interactive,
            };
            crate::build::build(&env, args).await
        }
        Command::Reproduce {
            manifest,
            context,
            out,
            timeout,
        } => {
            let args = crate::reproduce::Args {
                manifest,
                context,
                out,
                timeout,
                interactive,
            };
            crate::reproduce::reproduce(&env, args).await
        }
        Command::Artifacts(ArtifactsCmd::Ls { target, upload }) => {
            crate::build::artifacts_ls(&env, &target, upload.as_deref()).await
        }
        Command::Artifacts(ArtifactsCmd::Get {
            target,
            upload,
            out,
        }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(&target));
            crate::build::artifacts_get(&env, &target, upload.as_deref(), &out).await
        }
        Command::List => crate::build::list(&env.project),
        Command::Check => crate::build::check(&env.project),
        Command::Image(ImageCmd::Build { builders, force }) => {
            image_build(&env, &builders, force).await
        }
        Command::Image(ImageCmd::List) => image_list(&env),
        Command::Image(ImageCmd::Rm { what }) => image_rm(&env, &what).await,
        Command::Vm(VmCmd::Run { builder, command }) => {
            crate::vm::run(&env, &builder, &command.join(" ")).await
        }
        Command::Vm(VmCmd::Shell { builder }) => crate::vm::shell(&env, &builder).await,
        Command::Gc { force } => gc(&env, force).await,
    }
}

async fn image_build(env: &Env, names: &[String], force: bool) -> Result<i32> {
    // Validate every builder before baking any: a typo should not cost a bake first.
    let builders = names
        .iter()
        .map(|n| Builder::find(&env.project, n))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = bake::Options {
        force,
        ..env.bake.clone()
    };
    let cache = Cache::new(&env.dirs);
    for b in &builders {
        let started = std::time::Instant::now();
        let (img, how) = cancellable(&env.shutdown, cache.ensure(b, &opts)).await?;
        let how = match how {
            Provenance::Cached => "cached",
            Provenance::Baked => "baked",
        };
        println!(
            "{}\t{}\t{how} in {:.1}s\t{}",
            b.name,
            &img.digest[..16],
            started.elapsed().as_secs_f64(),
            img.dir.display()
        );
    }
    Ok(0)
}

fn image_list(env: &Env) -> Result<i32> {
    let images = Cache::new(&env.dirs).list();
    println!(
        "{:<24} {:<16} {:>10} {:>8}  SUITE/ARCH",
        "BUILDER", "DIGEST", "SIZE", "AGE"
    );
    let now = crate::machine::state::now_unix();
    for i in images {
        let age = humantime::format_duration(std::time::Duration::from_secs(
            now.saturating_sub(i.info.created_unix) / 60 * 60,
        ));
        println!(
            "{:<24} {:<16} {:>9}M {:>8}  {}/{}",
            i.info.builder,
            &i.digest[..16],
            i.disk_usage() >> 20,
            if age.to_string().is_empty() {
                "0m".into()
            } else {
                age.to_string()
            },
            i.info.recipe.suite,
            i.info.recipe.arch.debian()
        );
    }
    Ok(0)
}

async fn image_rm(env: &Env, what: &[String]) -> Result<i32> {
    let cache = Cache::new(&env.dirs);
    let mut code = 0;
    for w in what {
        let removed = cache.remove(w).await?;
        if removed.is_empty() {
            eprintln!("runner: no cached image matches `{w}`");
            code = 1;
        }
        for i in removed {
            println!("removed {} {}", i.info.builder, &i.digest[..16]);
        }
    }
    Ok(code)
}

async fn gc(env: &Env, force: bool) -> Result<i32> {
    let r = crate::gc::run(&env.dirs, &env.project, force).await?;
    for w in &r.in_use {
        println!("keep    {w}");
    }
    for w in &r.removed {
        println!("removed {w}");
    }
    for w in &r.would_remove {
        println!("orphan  {w}");
    }
    for w in &r.failed {
        println!("failed  {w}");
    }
    if !r.would_remove.is_empty() {
        println!(
            "dry run: pass --force to remove {} item(s)",
            r.would_remove.len()
        );
    }
    Ok(if r.failed.is_empty() { 0 } else { 1 })
}
