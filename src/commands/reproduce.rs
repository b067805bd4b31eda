//! `runner reproduce <manifest>`: rebuild from the recorded inputs in a fresh machine and say,
//! file by file, whether the same bytes came out.
//!
//! The context must be supplied (and must hash to the recorded digest — a reproduction from
//! other sources proves nothing); the script, env, SOURCE_DATE_EPOCH, artifact globs, the
//! image recipe (or the AMI) and the machine's size come from the manifest itself. `--on`
//! rebuilds on another builder instead (an EC2-built artifact on QEMU, say). The verdicts
//! are written as a signed statement, `reproduction.intoto.jsonl`, that `runner verify`
//! checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Env, Exit};
use crate::config::Target;
use crate::context::{Context, ContextOptions};
use crate::error::{Error, IoContext, Result, joined};
use crate::events::Outcome;
use crate::machine;
use crate::manifest::{self, Manifest};
use crate::progress::{self, Format};
use crate::provenance::reproduction::{self, Verdict, compare};
use crate::provenance::{self, keyring};
use crate::run::{self, Options, Run, RunOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest.json of a published build.
    pub manifest: PathBuf,
    /// The build context to use; it must match the manifest's context digest.
    #[arg(long)]
    pub context: PathBuf,
    /// Where the rebuild and reports go (default: under the state dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Deadline for the rebuild (as a target's `timeout`: 1s to 48h).
    #[arg(long, default_value = "60m", value_parser = crate::config::value::cli_timeout)]
    pub timeout: Duration,
    /// Rebuild on this builder of the project instead of the recorded one (e.g. QEMU for an
    /// EC2-built artifact).
    #[arg(long)]
    pub on: Option<String>,
}

pub async fn reproduce(env: &Env, args: Args) -> Result<Exit> {
    let m = Manifest::read(&args.manifest)?;
    check(&m, &args).await?;
    let out = args.out.clone().unwrap_or_else(|| {
        env.dirs
            .state
            .join("reproduce")
            .join(format!("{}-{}", m.target, crate::host::now_unix()))
    });
    std::fs::create_dir_all(&out).ctx(|| format!("cannot create `{}`", out.display()))?;
    let rebuilt_dir = rebuild(env, &m, &args, &out).await?;
    let rebuilt = Manifest::read(&rebuilt_dir.join(manifest::FILE))?;
    let verdicts = compare(&m, &rebuilt);
    let all_same = verdicts.iter().all(|(_, v)| *v == Verdict::Identical);
    let statement = attest(env, &m, &rebuilt, &verdicts, &out)?;
    if env.format == crate::progress::Format::Json {
        let artifacts: Vec<_> = verdicts
            .iter()
            .map(|(path, v)| serde_json::json!({"path": path, "result": v}))
            .collect();
        super::print_json(serde_json::json!({
            "target": m.target,
            "reproduced": all_same,
            "base_image_identical": rebuilt.base_image_sha256 == m.base_image_sha256,
            "artifacts": artifacts,
            "rebuild": rebuilt_dir,
            "statement": statement,
        }));
    } else {
        let places = Places {
            recorded: args.manifest.parent().unwrap_or(Path::new(".")),
            rebuilt: &rebuilt_dir,
            out: &out,
        };
        report(&m, &rebuilt, &verdicts, &places);
        println!("statement: {}", statement.display());
    }
    Ok(Exit::of(all_same))
}

/// Refuses what cannot be a reproduction: a script that is not the recorded one, a context
/// other than the recorded one, a machine runner cannot make again.
async fn check(m: &Manifest, args: &Args) -> Result<()> {
    if m.script.sha256 != manifest::sha256_hex(m.script.content.as_bytes()) {
        return Err(Error::NotReproducible {
            problem: "the manifest's script does not match its recorded sha256".into(),
            source: None,
        });
    }
    let opts = ContextOptions {
        root: args.context.clone(),
        exclude: m.context_excludes.clone(),
    };
    let digest = joined(
        "the context scan",
        tokio::task::spawn_blocking(move || Context::scan(&opts)?.digest()),
    )
    .await?;
    if m.context_digest != digest {
        return Err(Error::NotReproducible {
            problem: format!(
                "context `{}` has digest {digest}, but the manifest records {}: refusing to \
                 reproduce from different sources",
                args.context.display(),
                m.context_digest
            ),
            source: None,
        });
    }
    let recipe_now = m.builder.recipe.digest();
    if m.builder.recipe_digest != recipe_now {
        eprintln!(
            "runner: note: this runner's guest scripts differ from those of the recorded build \
             (recipe digest {recipe_now} now, {} recorded); the image is baked from the same \
             recipe",
            m.builder.recipe_digest
        );
    }
    Ok(())
}

/// Builds the recorded target again, forced, into `out/artifacts`; returns where its
/// artifacts and manifest are.
async fn rebuild(env: &Env, m: &Manifest, args: &Args, out: &Path) -> Result<PathBuf> {
    let script = out.join(&m.script.name);
    std::fs::write(&script, &m.script.content)
        .ctx(|| format!("cannot write `{}`", script.display()))?;
    let builder = rebuild_builder(env, m, args)?;
    let target = Target {
        name: m.target.to_string(),
        shape: m
            .machine
            .map(|s| s.shape())
            .or(builder.shape())
            .filter(|_| builder.shape().is_some()),
        builder,
        script,
        context: args.context.clone(),
        artifacts: m.artifact_globs.clone(),
        env: m.env.clone(),
        timeout: args.timeout,
        upload: None,
        transfer: Default::default(),
        cache: None,
    };
    let store = out.join("artifacts");
    let host = env.host();
    let project = super::project_if_any(env)?;
    let opts = RunOptions {
        force: true,
        local_store: Some(store.clone()),
        logs: Some(out.to_owned()),
        epoch: Some(m.source_date_epoch),
        context_excludes: Some(m.context_excludes.clone()),
        // What proves a cache cannot change an artifact: the reproduction never has one.
        no_cache: true,
        ..Default::default()
    };
    let (run, rx) = Run::new(&host, project.as_ref(), opts)?;
    let planned = run.local(vec![target]);
    let renderer = tokio::spawn(progress::run(rx, Format::Human, env.interactive));
    let opts = Options {
        jobs: Some(1),
        keep_going: false,
    };
    let results = run::dispatch::run(Arc::new(run), planned, &opts).await;
    let summary = renderer.await.map_err(|source| Error::Task {
        what: "the progress display",
        source,
    })?;
    if results.iter().any(|r| r.outcome != Outcome::Succeeded) {
        progress::print_summary(&summary, &mut std::io::stderr());
        return Err(Error::NotReproducible {
            problem: format!("the rebuild of `{}` did not succeed", m.target),
            source: None,
        });
    }
    Ok(store.join(&m.target))
}

/// The verdicts as a statement signed with the project's key when there is one:
/// `out/reproduction.intoto.jsonl`, which `runner verify` checks.
fn attest(
    env: &Env,
    m: &Manifest,
    rebuilt: &Manifest,
    verdicts: &[(String, Verdict)],
    out: &Path,
) -> Result<PathBuf> {
    let key = keyring::signing_key(super::project_if_any(env)?.as_ref())?;
    let line = reproduction::signed(m, rebuilt, verdicts, key.as_deref());
    let path = out.join(provenance::REPRODUCTION_FILE);
    std::fs::write(&path, line).ctx(|| format!("cannot write `{}`", path.display()))?;
    Ok(path)
}

/// The builder a rebuild runs on: `--on`, else one that makes the recorded machine again (the
/// recorded recipe; the recorded AMI with the project's EC2 builder of that name).
fn rebuild_builder(env: &Env, m: &Manifest, args: &Args) -> Result<crate::config::Builder> {
    // Always `builders/<name>.toml` of this project: a recorded name is never a path.
    let configured = |name: &str| {
        crate::config::Builder::load(&env.project.join("builders").join(format!("{name}.toml")))
    };
    if let Some(on) = &args.on {
        return Ok(configured(on)?);
    }
    let shape = m
        .machine
        .map(|s| s.shape())
        .unwrap_or(machine::DEFAULT_SHAPE);
    machine::builder_for(&m.builder.name, &m.builder.recipe, shape, || {
        configured(&m.builder.name)
    })
}

/// Where a report's files are: the recorded build's (beside its manifest), the rebuild's, and
/// where reports go.
struct Places<'a> {
    recorded: &'a Path,
    rebuilt: &'a Path,
    out: &'a Path,
}

/// Prints a verdict per artifact (and runs diffoscope on differences); true if every
/// artifact is identical.
fn report(m: &Manifest, rebuilt: &Manifest, verdicts: &[(String, Verdict)], at: &Places) -> bool {
    if rebuilt.base_image_sha256 != m.base_image_sha256 {
        println!(
            "base image: differs from the recorded one (rebaked here: {} vs {}); same recipe",
            rebuilt.base_image_sha256.short(),
            m.base_image_sha256.short()
        );
    } else {
        println!("base image: identical");
    }
    let mut all_same = true;
    for (path, v) in verdicts {
        all_same &= *v == Verdict::Identical;
        match v {
            Verdict::Identical => println!("identical  {path}"),
            Verdict::Different { recorded, rebuilt } => {
                println!(
                    "different  {path}\n           recorded sha256 {recorded}\n           rebuilt  sha256 {rebuilt}"
                );
                diffoscope(at.recorded, at.rebuilt, path, at.out);
            }
            Verdict::Missing => println!("missing    {path} (recorded, not rebuilt)"),
            Verdict::Extra { rebuilt } => {
                println!("extra      {path} (rebuilt, not recorded; sha256 {rebuilt})")
            }
        }
    }
    println!(
        "{}: {} — rebuild in {}",
        m.target,
        if all_same {
            "reproduced, every artifact identical"
        } else {
            "NOT reproduced"
        },
        at.rebuilt.display()
    );
    all_same
}

/// Runs diffoscope on a differing file when both it and the recorded file are at hand: the
/// recorded one is the file beside the manifest (as `artifacts get` or a local store leaves
/// it), never what the manifest's URI names — a manifest is untrusted, and its URI could name
/// any host file.
fn diffoscope(recorded_dir: &Path, rebuilt_dir: &Path, path: &str, out: &Path) {
    let original = recorded_dir.join(path);
    if !std::fs::symlink_metadata(&original).is_ok_and(|m| m.is_file()) {
        return;
    }
    let report = out.join(format!("diffoscope-{}.txt", path.replace('/', "_")));
    let ran = std::process::Command::new("diffoscope")
        .arg("--text")
        .arg(&report)
        .arg("--")
        .arg(&original)
        .arg(rebuilt_dir.join(path))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if ran.is_ok() {
        println!("           diffoscope report: {}", report.display());
    }
}
