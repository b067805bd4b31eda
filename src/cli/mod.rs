//! Command-line interface: parse, find the project, build the run-wide environment,
//! dispatch to `commands`, print the cause chain, exit with a documented code.

mod args;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use self::args::{ArtifactsCmd, CacheCmd, Cli, Command, ImageCmd, KeyCmd, MessageFormat, VmCmd};
use crate::commands::{self, Env, Exit};
use crate::error::{Error, Result, chain};
use crate::machine::{Machines, Settings};
use crate::paths::Dirs;
use crate::progress::Format;
use crate::signals::Shutdown;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging(&cli);
    let project = match (&cli.project, &cli.command) {
        (Some(p), _) => p.clone(),
        // A new project goes where the user stands, not into one found above it.
        (None, Command::Init { .. }) => PathBuf::from("."),
        (None, _) => discover(),
    };
    let dirs = Dirs::resolve(cli.cache_dir.clone(), cli.state_dir.clone());
    let settings = Settings {
        accel: cli.accel,
        cold: cli.cold,
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
                return Exit::Error.code();
            }
        };
        let env = Env {
            project,
            dirs,
            machines: machines.clone(),
            shutdown: shutdown.clone(),
            interactive: std::io::stderr().is_terminal() && !cli.quiet,
            format: match cli.message_format {
                MessageFormat::Json => Format::Json,
                MessageFormat::Human => Format::Human,
            },
            quiet: cli.quiet,
        };
        let outcome = dispatch(cli.command, &env).await;
        if let Err(e) = &outcome {
            eprintln!("{}", chain(e));
        }
        // What the run's machines shared (a cloud's temporary group) goes once they have.
        if let Err(e) = machines.close().await {
            eprintln!("runner: {}; `runner gc` will retry", chain(&e));
        }
        // A signal decides the code: the run was interrupted, whatever it returned.
        shutdown.exit_code().unwrap_or_else(|| match outcome {
            Ok(exit) => exit.code(),
            Err(e) => e.exit_code().code(),
        })
    });
    // Teardowns started from `Drop` (cancelled or panicked cloud launches) run on threads of
    // their own; the process waits for them, or instances would outlive their runner.
    machines.registry().join();
    // Exit without waiting for blocking readers (a forwarded stdin) to notice.
    std::process::exit(code)
}

/// `-v`/`-vv`, else `RUNNER_LOG`; the AWS SDK's own warnings (an instance-metadata lookup
/// that failed, a retry) stay out of a normal run's output: runner reports what matters.
fn logging(cli: &Cli) {
    let filter = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => {
            "warn,aws_config=error,aws_runtime=error,aws_smithy_runtime=error,aws_sdk_s3=error,aws_sdk_ec2=error"
        }
        (_, 1) => "info,russh=warn",
        _ => "debug,russh=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The project is found as Cargo.toml is: the nearest directory at or above the current one
/// holding a runner.toml; else the current directory.
fn discover() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    here.ancestors()
        .find(|d| d.join(crate::config::project::FILE).is_file())
        .map(Path::to_path_buf)
        .unwrap_or(here)
}

async fn dispatch(command: Command, env: &Env) -> Result<Exit> {
    match command {
        Command::Build(args) => commands::build::build(env, args).await,
        Command::Reproduce(args) => commands::reproduce::reproduce(env, args).await,
        Command::Verify { what, key } => {
            commands::verify::verify(env, commands::verify::Args { what, key }).await
        }
        Command::Why { target, upload } => commands::why::why(env, &target, upload.as_ref()).await,
        Command::Key(KeyCmd::Generate { out }) => commands::key::generate(env, out.as_deref()),
        Command::Artifacts(cmd) => artifacts(env, cmd).await,
        Command::List => commands::project::list(env),
        Command::Check => commands::project::check(env),
        Command::Init { dir } => commands::init::init(env, dir.as_deref()),
        Command::Image(cmd) => image(env, cmd).await,
        Command::Cache(CacheCmd::Ls) => commands::cache::ls(env),
        Command::Cache(CacheCmd::Rm { what }) => commands::cache::rm(env, &what),
        Command::Vm(cmd) => vm(env, cmd).await,
        Command::Gc { force } => commands::gc::gc(env, force).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "runner", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        Command::Man => man_page(),
    }
}

async fn artifacts(env: &Env, cmd: ArtifactsCmd) -> Result<Exit> {
    match cmd {
        ArtifactsCmd::Ls { target, upload } => {
            commands::artifacts::ls(env, &target, upload.as_ref()).await
        }
        ArtifactsCmd::Get {
            target,
            upload,
            out,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from(&target));
            commands::artifacts::get(env, &target, upload.as_ref(), &out).await
        }
    }
}

async fn image(env: &Env, cmd: ImageCmd) -> Result<Exit> {
    match cmd {
        ImageCmd::Build { builders, .. } => commands::image::build(env, &builders).await,
        ImageCmd::List => commands::image::list(env),
        ImageCmd::Rm { what } => commands::image::rm(env, &what).await,
    }
}

async fn vm(env: &Env, cmd: VmCmd) -> Result<Exit> {
    match cmd {
        VmCmd::Run { builder, command } => {
            commands::vm::run(env, &builder, &command.join(" ")).await
        }
        VmCmd::Shell { builder } => commands::vm::shell(env, &builder).await,
    }
}

fn man_page() -> Result<Exit> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|source| Error::Io {
            context: "cannot write the man page".into(),
            source,
        })?;
    Ok(Exit::Success)
}
