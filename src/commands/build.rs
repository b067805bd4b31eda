//! `runner build`: the selected targets of runner.toml, each in a fresh machine.

use std::sync::Arc;

use super::{Env, Exit};
use crate::config::{Project, S3Url};
use crate::error::{Error, Result};
use crate::progress::{self, Format};
use crate::run::{self, Options, Run, RunOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target names or globs (`hello-*`); all targets if none.
    pub targets: Vec<String>,
    /// Build every target.
    #[arg(long)]
    pub all: bool,
    /// How many targets at once (default: by host CPUs and memory).
    #[arg(short, long, value_parser = crate::config::value::cli_jobs)]
    pub jobs: Option<usize>,
    /// Keep launching targets after one fails.
    #[arg(long)]
    pub keep_going: bool,
    /// Leave a failed target's machine running and print how to ssh into it.
    #[arg(long)]
    pub keep_failed: bool,
    /// Build even if a published build has the same inputs digest (no cache hit).
    #[arg(long)]
    pub force: bool,
    /// Build without build caches: machines start without them and save nothing.
    #[arg(long)]
    pub no_cache: bool,
    /// Publish to S3 (`s3://bucket/prefix`) instead of the configured store.
    #[arg(long)]
    pub upload: Option<S3Url>,
    /// The run's spend cap in US dollars (over `[limits] max_cost`): machines whose worst
    /// case (hourly price × timeout) would pass it are not launched.
    #[arg(long, value_parser = crate::config::value::cli_cost)]
    pub max_cost: Option<f64>,
    /// Print the machines the run would launch, their types and worst-case cost, and start
    /// nothing.
    #[arg(long)]
    pub plan: bool,
}

/// Builds the selected targets; returns the process exit code (0 only if all succeeded).
pub async fn build(env: &Env, args: Args) -> Result<Exit> {
    let project = Project::load(&env.project)?;
    let targets: Vec<_> = project
        .select(&args.targets, args.all)?
        .into_iter()
        .cloned()
        .collect();
    if targets.is_empty() {
        return Err(Error::NoTargets {
            file: project.root.join(crate::config::project::FILE),
        });
    }
    if args.plan {
        return super::plan::print(env, &project, &targets, args.max_cost);
    }
    let host = env.host();
    let opts = RunOptions {
        keep_failed: args.keep_failed,
        force: args.force,
        max_cost: args.max_cost,
        no_cache: args.no_cache,
        ..Default::default()
    };
    let (run, rx) = Run::new(&host, Some(&project), opts)?;
    let planned = run
        .plan(&host, &project, targets, args.upload.as_ref())
        .await?;
    let run = Arc::new(run);
    let format = match (env.quiet, env.format) {
        (true, Format::Human) => Format::Quiet,
        (_, f) => f,
    };
    let renderer = tokio::spawn(progress::run(rx, format, env.interactive));
    let opts = Options {
        jobs: args.jobs,
        keep_going: args.keep_going,
    };
    let results = run::dispatch::run(run.clone(), planned, &opts).await;
    run::release_stores(&run).await;
    // The renderer ends when the last emitter (the run's) is gone.
    drop(run);
    let summary = renderer.await.map_err(|source| Error::Task {
        what: "the progress display",
        source,
    })?;
    let ok = results.iter().all(|r| r.outcome.ok());
    if !(env.quiet && ok) {
        progress::print_summary(&summary, &mut std::io::stderr());
    }
    Ok(Exit::of(ok))
}
