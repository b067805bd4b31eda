//! The command line, as clap definitions. Dispatch is in the parent module; each command's
//! work is in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::S3Url;
use crate::machine::AccelChoice;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Disposable build VMs: boot, build, collect, tear down"
)]
pub struct Cli {
    /// Project directory (holds runner.toml, builders/, provision-scripts/). Default: the
    /// nearest directory at or above the current one that holds a runner.toml.
    #[arg(short = 'C', long, global = true)]
    pub project: Option<PathBuf>,
    /// Image cache directory.
    #[arg(long, global = true, env = "RUNNER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// State directory (live machines, logs).
    #[arg(long, global = true, env = "RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Hardware acceleration: auto probes KVM and falls back to TCG if guests hang.
    #[arg(long, global = true, env = "RUNNER_ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
    /// Boot every QEMU machine cold, never from a warm-start snapshot.
    #[arg(long, global = true, env = "RUNNER_COLD")]
    pub cold: bool,
    /// Debian mirror to bake from (default: the host's apt configuration).
    #[arg(long, global = true, env = "RUNNER_MIRROR")]
    pub mirror: Option<String>,
    /// More logging (repeat for more); RUNNER_LOG takes a tracing filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress, no notes: errors, and a summary only when something failed.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// `human`, or `json`: one JSON document (or, for build, one event) per line on stdout,
    /// each with `"schema": 1`.
    #[arg(long, global = true, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How runner reports on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build targets from runner.toml, each in a fresh machine.
    Build(crate::commands::build::Args),
    /// Rebuild from a manifest in a fresh machine and compare every artifact.
    Reproduce(crate::commands::reproduce::Args),
    /// Check a published build: its provenance signature, every artifact's sha256, and
    /// that manifest and provenance agree (or a reproduction's signed verdicts).
    Verify {
        /// An artifact directory (artifacts/<target>), a reproduction's directory, or
        /// s3://bucket/prefix/target[/build id].
        what: String,
        /// The public key: a file, or 64 hex digits (default: [signing] public_key).
        #[arg(long)]
        key: Option<String>,
    },
    /// What changed since the target's newest published build, or that it is a cache hit.
    Why {
        target: String,
        /// Compare with this S3 location instead of the configured store.
        #[arg(long)]
        upload: Option<S3Url>,
    },
    /// Signing keys for provenance.
    #[command(subcommand)]
    Key(KeyCmd),
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
    /// Build caches (`cache = [...]` of a target): list, remove.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Disposable machines, used directly.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Find machines and bakes left by a runner that died; remove them with --force.
    Gc {
        #[arg(long)]
        force: bool,
    },
    /// Make a new project here (or in DIR): runner.toml, a builder, a script, a source.
    Init { dir: Option<PathBuf> },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from these definitions.
    Man,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Make an ed25519 key: OUT (private, PKCS#8 PEM, mode 0600) and OUT with `.pub` (public,
    /// hex). OUT defaults to `signing.pem` in runner's config directory
    /// (`$XDG_CONFIG_HOME/runner`, `~/.config/runner`): outside every project, so no build
    /// context can hold it.
    Generate { out: Option<PathBuf> },
}

#[derive(Subcommand)]
pub enum ArtifactsCmd {
    /// Show the newest published build of a target: its artifacts, sizes, sha256 and URIs.
    Ls {
        target: String,
        /// Look in this S3 location instead of the configured store.
        #[arg(long)]
        upload: Option<S3Url>,
    },
    /// Download the newest published build of a target and verify every sha256.
    Get {
        target: String,
        #[arg(long)]
        upload: Option<S3Url>,
        /// Destination directory (default: ./<target>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ImageCmd {
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
pub enum CacheCmd {
    /// Show every build cache on this host: its key, target, paths, generations and size.
    Ls,
    /// Remove build caches by key, or by the target or `cache_key` they belong to.
    Rm {
        #[arg(required = true)]
        what: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum VmCmd {
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
