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

use super::Env;
use crate::artifacts::Limits;
use crate::config::Target;
use crate::context::{Context, ContextOptions};
use crate::error::{Error, IoContext, Result, joined};
use crate::events::{Emitter, Outcome};
use crate::machine::{self, Origin};
use crate::manifest::{self, Manifest};
use crate::progress::{self, Format};
use crate::provenance;
use crate::run::{self, Options, Run};
use crate::store::local::LocalStore;

pub struct Args {
    pub manifest: PathBuf,
    pub context: PathBuf,
    pub out: Option<PathBuf>,
    pub timeout: Duration,
    /// Rebuild on this builder of the project instead of the recorded one.
    pub on: Option<String>,
}

/// One artifact's verdict.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Identical,
    Different { recorded: String, rebuilt: String },
    Missing,
    Extra { rebuilt: String },
}

pub async fn reproduce(env: &Env, args: Args) -> Result<i32> {
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
    Ok(super::Exit::of(all_same))
}

/// Refuses what cannot be a reproduction: a script that is not the recorded one, a context
/// other than the recorded one, a machine runner cannot make again.
async fn check(m: &Manifest, args: &Args) -> Result<()> {
    if m.script.sha256 != manifest::sha256_hex(m.script.content.as_bytes()) {
        return Err(Error::other(
            "the manifest's script does not match its recorded sha256",
        ));
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
        return Err(Error::other(format!(
            "context `{}` has digest {digest}, but the manifest records {}: refusing to reproduce from different sources",
            args.context.display(),
            m.context_digest
        )));
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
    };
    let store = out.join("artifacts");
    let (emitter, rx) = Emitter::channel();
    let run = Arc::new(Run {
        machines: env.machines.clone(),
        cancel: env.shutdown.token.clone(),
        store: Arc::new(LocalStore::new(&store)),
        remote: Default::default(),
        limits: Limits::default(),
        leak_timeout: Duration::from_secs(2),
        log_limit: crate::config::project::DEFAULT_LOG.0,
        console_limit: crate::config::project::DEFAULT_CONSOLE.0,
        emitter,
        keep_failed: false,
        force: true,
        epoch: m.source_date_epoch,
        logs: out.to_owned(),
        exclude: vec![],
        context_excludes: Some(m.context_excludes.clone()),
        signing: super::key::signing_key(super::project_if_any(env)?.as_ref())?,
        packs: env.dirs.cache.clone(),
        shared: Default::default(),
    });
    let renderer = tokio::spawn(progress::run(rx, Format::Human, env.interactive));
    let opts = Options {
        jobs: Some(1),
        keep_going: false,
    };
    let results = run::dispatch::run(run, vec![target], &opts).await;
    let summary = renderer.await.map_err(|source| Error::Task {
        what: "the progress display",
        source,
    })?;
    if results.iter().any(|r| r.outcome != Outcome::Succeeded) {
        progress::print_summary(&summary, &mut std::io::stderr());
        return Err(Error::other(format!(
            "the rebuild of `{}` did not succeed",
            m.target
        )));
    }
    Ok(store.join(&m.target))
}

/// The verdicts as an in-toto statement about the recorded artifacts, signed with the
/// project's key when there is one: `out/reproduction.intoto.jsonl`, which `runner verify`
/// checks.
fn attest(
    env: &Env,
    m: &Manifest,
    rebuilt: &Manifest,
    verdicts: &[(String, Verdict)],
    out: &Path,
) -> Result<PathBuf> {
    let statement = provenance::Statement {
        type_: provenance::STATEMENT_TYPE.into(),
        subject: m
            .artifacts
            .iter()
            .map(|a| provenance::Subject::sha256(&a.path, &a.sha256))
            .collect(),
        predicate_type: provenance::REPRODUCTION.into(),
        predicate: serde_json::json!({
            "original": {
                "target": m.target,
                "build": manifest::build_id(&m.inputs_digest, m.started_unix),
                "inputsDigest": m.inputs_digest,
                "builder": m.builder.name,
                "baseImage": m.base_image_sha256,
            },
            "rebuild": {
                "builder": rebuilt.builder.name,
                "baseImage": rebuilt.base_image_sha256,
                "machine": rebuilt.machine,
                "runnerVersion": rebuilt.runner_version,
            },
            "reproduced": verdicts.iter().all(|(_, v)| *v == Verdict::Identical),
            "verdicts": verdicts
                .iter()
                .map(|(path, v)| serde_json::json!({"path": path, "result": v}))
                .collect::<Vec<_>>(),
        }),
    };
    let key = super::key::signing_key(super::project_if_any(env)?.as_ref())?;
    let payload = serde_json::to_vec(&statement).expect("a statement serializes");
    let envelope = provenance::dsse::Envelope::new(&payload, key.as_deref());
    let path = out.join(provenance::REPRODUCTION_FILE);
    std::fs::write(&path, envelope.to_line())
        .ctx(|| format!("cannot write `{}`", path.display()))?;
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
    let own = match &m.builder.recipe {
        Origin::Ec2(_) => Some(configured(&m.builder.name).map_err(|e| {
            Error::other(format!(
                "`{}` was built on EC2 builder `{}`: reproducing it needs that builder's file \
                 (account, region, network) in this project, or --on another builder ({e})",
                m.target, m.builder.name
            ))
        })?),
        Origin::Image(_) => None,
    };
    let shape = m
        .machine
        .map(|s| s.shape())
        .unwrap_or(machine::DEFAULT_SHAPE);
    machine::builder_for(&m.builder.name, &m.builder.recipe, shape, own.as_ref())
}

/// Prints a verdict per artifact (and runs diffoscope on differences); true if every
/// artifact is identical.
/// Where a report's files are: the recorded build's (beside its manifest), the rebuild's, and
/// where reports go.
struct Places<'a> {
    recorded: &'a Path,
    rebuilt: &'a Path,
    out: &'a Path,
}

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

/// Per artifact path, sorted: the recorded build against the rebuild.
pub fn compare(recorded: &Manifest, rebuilt: &Manifest) -> Vec<(String, Verdict)> {
    let mut out = Vec::new();
    for a in &recorded.artifacts {
        let v = match rebuilt.artifacts.iter().find(|b| b.path == a.path) {
            Some(b) if b.sha256 == a.sha256 => Verdict::Identical,
            Some(b) => Verdict::Different {
                recorded: a.sha256.to_string(),
                rebuilt: b.sha256.to_string(),
            },
            None => Verdict::Missing,
        };
        out.push((a.path.to_string(), v));
    }
    for b in &rebuilt.artifacts {
        if !recorded.artifacts.iter().any(|a| a.path == b.path) {
            out.push((
                b.path.to_string(),
                Verdict::Extra {
                    rebuilt: b.sha256.to_string(),
                },
            ));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
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
