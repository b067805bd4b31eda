//! Command-line interface: parse, build the run-wide environment, dispatch to `commands`,
//! print the cause chain, exit with a meaningful code.

mod args;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use self::args::{ArtifactsCmd, Cli, Command, ImageCmd, VmCmd};
use crate::commands::{self, Env};
use crate::error::{Result, chain};
use crate::machine::{Machines, Settings};
use crate::paths::Dirs;
use crate::progress::Format;
use crate::signals::Shutdown;

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
    let dirs = Dirs::resolve(cli.cache_dir.clone(), cli.state_dir.clone());
    let settings = Settings {
        accel: cli.accel,
        mirror: cli.mirror.clone(),
        rebake: matches!(
            cli.command,
            Command::Image(ImageCmd::Build { force: true, .. })
        ),
    };
    let machines = Arc::new(Machines::new(&dirs, settings));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = rt.block_on(async {
        let shutdown = match Shutdown::install(machines.registry().clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return 1;
            }
        };
        let env = Env {
            project: cli.project.clone(),
            dirs,
            machines: machines.clone(),
            shutdown: shutdown.clone(),
            interactive: std::io::stderr().is_terminal(),
        };
        match dispatch(cli.command, &env).await {
            Ok(code) => shutdown.exit_code().unwrap_or(code),
            Err(e) => {
                eprintln!("{}", chain(&e));
                shutdown.exit_code().unwrap_or(1)
            }
        }
    });
    // Teardowns started from `Drop` (cancelled or panicked cloud launches) run on threads of
    // their own; the process waits for them, or instances would outlive their runner.
    machines.registry().join();
    // Exit without waiting for blocking readers (a forwarded stdin) to notice.
    std::process::exit(code)
}

async fn dispatch(command: Command, env: &Env) -> Result<i32> {
    match command {
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
            let args = commands::build::Args {
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
            };
            commands::build::build(env, args).await
        }
        Command::Reproduce {
            manifest,
            context,
            out,
            timeout,
        } => {
            let args = commands::reproduce::Args {
                manifest,
                context,
                out,
                timeout,
            };
            commands::reproduce::reproduce(env, args).await
        }
        Command::Artifacts(ArtifactsCmd::Ls { target, upload }) => {
            commands::artifacts::ls(env, &target, upload.as_deref()).await
        }
        Command::Artifacts(ArtifactsCmd::Get {
            target,
            upload,
            out,
        }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(&target));
            commands::artifacts::get(env, &target, upload.as_deref(), &out).await
        }
        Command::List => commands::project::list(&env.project),
        Command::Check => commands::project::check(&env.project),
        Command::Image(ImageCmd::Build { builders, .. }) => {
            commands::image::build(env, &builders).await
        }
        Command::Image(ImageCmd::List) => commands::image::list(env),
        Command::Image(ImageCmd::Rm { what }) => commands::image::rm(env, &what).await,
        Command::Vm(VmCmd::Run { builder, command }) => {
            commands::vm::run(env, &builder, &command.join(" ")).await
        }
        Command::Vm(VmCmd::Shell { builder }) => commands::vm::shell(env, &builder).await,
        Command::Gc { force } => commands::gc::gc(env, force).await,
    }
}
