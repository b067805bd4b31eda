//! The dispatcher and the per-target pipeline against the in-process fake backend: limits,
//! keep-going, cancellation, timeouts, keep-failed, panics and teardown ordering, in
//! milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{Host, Options, Planned, Run, RunOptions};
use crate::config::{BackendConfig, Builder, QemuBuilder, Shape, Size, Target};
use crate::events::{Event, FailureKind, Outcome, TargetResult};
use crate::machine::fake::{Behaviour, FakeBackend, Shared};
use crate::machine::{Machines, record::MachineRecord};
use crate::paths::Dirs;

mod cap;
mod reclaim;

struct World {
    tmp: tempfile::TempDir,
    dirs: Dirs,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("ctx")).unwrap();
        std::fs::write(tmp.path().join("ctx/a.c"), "int main(){}\n").unwrap();
        std::fs::write(tmp.path().join("build.sh"), "#!/bin/sh\n").unwrap();
        let dirs = Dirs::resolve(
            Some(tmp.path().join("cache")),
            Some(tmp.path().join("state")),
        );
        World { tmp, dirs }
    }

    fn target(&self, name: &str, timeout: Duration) -> Target {
        let builder = Builder {
            name: "fake".into(),
            path: self.tmp.path().join("builders/fake.toml"),
            backend: BackendConfig::Qemu(QemuBuilder {
                kind: crate::config::ImageKind::Debian {
                    suite: "bookworm".into(),
                    init: Default::default(),
                    warm: true,
                },
                arch: crate::config::Arch::Amd64,
                packages: vec![],
                shape: Shape {
                    vcpus: 1,
                    memory: Size(1 << 30),
                },
                disk: Size(4 << 30),
                boot_timeout: Duration::from_secs(5),
            }),
            cache: None,
        };
        Target {
            name: name.into(),
            shape: builder.shape(),
            builder,
            script: self.tmp.path().join("build.sh"),
            context: self.tmp.path().join("ctx"),
            artifacts: vec![],
            env: BTreeMap::new(),
            timeout,
            upload: None,
            transfer: Default::default(),
            cache: None,
        }
    }

    /// A run made as `build` makes one (no project; defaults), over the fake backend, with
    /// short limits so leftover and log tests take milliseconds.
    fn run(&self, backend: FakeBackend, keep_failed: bool) -> Arc<Run> {
        self.run_capped(backend, keep_failed, None)
    }

    /// [`World::run`] with a spend cap in dollars.
    fn run_capped(&self, backend: FakeBackend, keep_failed: bool, cap: Option<f64>) -> Arc<Run> {
        self.run_with_events(backend, keep_failed, cap).0
    }

    /// [`World::run_capped`], and the run's events.
    fn run_with_events(
        &self,
        backend: FakeBackend,
        keep_failed: bool,
        cap: Option<f64>,
    ) -> (Arc<Run>, UnboundedReceiver<Event>) {
        let host = Host {
            machines: Arc::new(Machines::fake(&self.dirs, Arc::new(backend))),
            dirs: &self.dirs,
            cancel: Default::default(),
        };
        let opts = RunOptions {
            keep_failed,
            force: true,
            local_store: Some(self.tmp.path().join("artifacts")),
            logs: Some(self.tmp.path().join("logs")),
            epoch: Some(crate::run::DEFAULT_EPOCH),
            context_excludes: None,
            max_cost: cap,
            no_cache: false,
        };
        let (mut run, rx) = Run::new(&host, None, opts).unwrap();
        run.limits.leak_timeout = Duration::from_millis(100);
        run.limits.max_log = Size(1 << 20);
        run.limits.max_console = Size(1 << 20);
        (Arc::new(run), rx)
    }

    /// `t`, published to the run's local store.
    fn planned(run: &Run, t: Target) -> Vec<Planned> {
        run.local(vec![t])
    }

    fn machine_dirs(&self) -> Vec<std::path::PathBuf> {
        crate::machine::dir::all(&self.dirs.machines())
    }
}

fn fake(w: &World, behaviour: &[(&str, Behaviour)]) -> (FakeBackend, Arc<Shared>) {
    let mut b = FakeBackend::new(&w.dirs);
    b.behaviour = behaviour
        .iter()
        .map(|(n, b)| (n.to_string(), b.clone()))
        .collect();
    let shared = b.shared.clone();
    (b, shared)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

async fn dispatch(
    w: &World,
    run: Arc<Run>,
    targets: &[String],
    jobs: Option<usize>,
    keep_going: bool,
) -> Vec<TargetResult> {
    let ts = targets
        .iter()
        .map(|n| w.target(n, Duration::from_secs(30)))
        .collect();
    let planned = run.local(ts);
    super::dispatch::run(run, planned, &Options { jobs, keep_going }).await
}

fn slow(ms: u64) -> Behaviour {
    Behaviour::Exit {
        code: 0,
        after: Duration::from_millis(ms),
    }
}

#[tokio::test]
async fn jobs_caps_machines_alive_at_once_and_every_one_is_torn_down() {
    let w = World::new();
    let list = names(6);
    let behaviour: Vec<(&str, Behaviour)> = list.iter().map(|n| (n.as_str(), slow(30))).collect();
    let (b, shared) = fake(&w, &behaviour);
    let results = dispatch(&w, w.run(b, false), &list, Some(2), false).await;
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Succeeded),
        "{results:?}"
    );
    assert!(
        results.iter().all(|r| r.artifacts.len() == 4),
        "file, SHA256SUMS, provenance, manifest"
    );
    assert_eq!(shared.peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(shared.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn without_jobs_the_backend_capacity_is_the_limit() {
    let w = World::new();
    let list = names(7);
    let behaviour: Vec<(&str, Behaviour)> = list.iter().map(|n| (n.as_str(), slow(30))).collect();
    let (mut b, shared) = fake(&w, &behaviour);
    b.capacity = 3;
    let results = dispatch(&w, w.run(b, false), &list, None, false).await;
    assert!(results.iter().all(|r| r.outcome == Outcome::Succeeded));
    assert_eq!(shared.peak.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failure_stops_new_launches_unless_keep_going() {
    let w = World::new();
    let list = names(4);
    let fail = Behaviour::Exit {
        code: 3,
        after: Duration::ZERO,
    };
    let (b, _) = fake(&w, &[("t0", fail.clone())]);
    let results = dispatch(&w, w.run(b, false), &list, Some(1), false).await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(results[0].failure, Some(FailureKind::Script));
    assert_eq!(results[0].exit_code, Some(3));
    let err = results[0].error.as_deref().unwrap();
    assert!(
        err.contains("t0 failed in provision") && err.contains("exit code 3"),
        "{err}"
    );
    assert!(results[1..].iter().all(|r| r.outcome == Outcome::Skipped));

    let (b, _) = fake(&w, &[("t0", fail)]);
    let results = dispatch(&w, w.run(b, false), &list, Some(1), true).await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert!(results[1..].iter().all(|r| r.outcome == Outcome::Succeeded));
}

#[tokio::test]
async fn cancelling_tears_running_targets_down_and_starts_no_more() {
    let w = World::new();
    let list = names(3);
    let behaviour: Vec<(&str, Behaviour)> =
        list.iter().map(|n| (n.as_str(), slow(60_000))).collect();
    let (b, shared) = fake(&w, &behaviour);
    let run = w.run(b, false);
    let cancel = run.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let results = dispatch(&w, run, &list, Some(2), false).await;
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Cancelled; 3]);
    assert!(
        results
            .iter()
            .all(|r| r.failure == Some(FailureKind::Cancelled))
    );
    assert_eq!(
        shared
            .journal()
            .iter()
            .filter(|l| l.starts_with("teardown t"))
            .count(),
        2,
        "{:?}",
        shared.journal()
    );
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn a_timeout_fails_the_target_and_tears_it_down() {
    let w = World::new();
    let (b, shared) = fake(&w, &[("slow", slow(60_000))]);
    let t = w.target("slow", Duration::from_millis(300));
    let run = w.run(b, false);
    let planned = World::planned(&run, t);
    let results = super::dispatch::run(
        run,
        planned,
        &Options {
            jobs: None,
            keep_going: false,
        },
    )
    .await;
    assert_eq!(results[0].failure, Some(FailureKind::Timeout));
    assert!(
        results[0]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms")
    );
    assert_eq!(shared.journal().last().unwrap(), "teardown slow");
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn keep_failed_leaves_the_machine_with_a_way_in_and_marks_it_for_gc() {
    let w = World::new();
    let fail = Behaviour::Exit {
        code: 1,
        after: Duration::ZERO,
    };
    let (b, shared) = fake(&w, &[("bad", fail)]);
    let results = dispatch(&w, w.run(b, true), &["bad".into()], None, false).await;
    let err = results[0].error.as_deref().unwrap();
    assert!(err.contains("machine kept: ssh -i"), "{err}");
    assert!(!shared.journal().iter().any(|l| l.starts_with("teardown")));
    let dirs = w.machine_dirs();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("id_ed25519").exists() && dirs[0].join("known_hosts").exists());
    assert!(MachineRecord::read(&dirs[0]).unwrap().kept);
}

#[tokio::test]
async fn a_panicking_target_is_a_failed_result_and_the_others_still_finish() {
    let w = World::new();
    let list = names(3);
    let (b, shared) = fake(&w, &[("t1", Behaviour::Panic)]);
    let results = dispatch(&w, w.run(b, false), &list, Some(3), true).await;
    assert_eq!(results[1].outcome, Outcome::Failed);
    assert_eq!(results[1].failure, Some(FailureKind::Panic));
    assert!(results[1].error.as_deref().unwrap().contains("panicked"));
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    assert_eq!(results[2].outcome, Outcome::Succeeded);
    assert!(shared.journal().contains(&"teardown (drop) t1".to_owned()));
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn a_machine_that_dies_is_its_own_kind_of_failure() {
    let w = World::new();
    let (b, _) = fake(&w, &[("gone", Behaviour::Dies)]);
    let results = dispatch(&w, w.run(b, false), &["gone".into()], None, false).await;
    assert_eq!(results[0].failure, Some(FailureKind::MachineDied));
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn each_machine_is_torn_down_after_its_script_and_exactly_once() {
    let w = World::new();
    let list = names(4);
    let (b, shared) = fake(&w, &[]);
    dispatch(&w, w.run(b, false), &list, Some(2), false).await;
    let journal = shared.journal();
    for n in &list {
        // Every step is in the journal: a missing one fails here, not as `None < Some(_)`.
        let at = |what: &str| {
            let line = format!("{what} {n}");
            journal
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("no `{line}` in {journal:?}"))
        };
        let (launch, provision, teardown) = (at("launch"), at("provision"), at("teardown"));
        assert!(launch < provision && provision < teardown, "{journal:?}");
        assert_eq!(
            journal
                .iter()
                .filter(|l| l.starts_with("teardown") && l.ends_with(&format!(" {n}")))
                .count(),
            1
        );
    }
}

#[tokio::test]
async fn the_context_pack_a_build_leaves_is_the_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let (b, _) = fake(&w, &[]);
    let results = dispatch(&w, w.run(b, false), &names(1), None, false).await;
    assert_eq!(
        results[0].outcome,
        Outcome::Succeeded,
        "{:?}",
        results[0].error
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let packs = w.tmp.path().join("cache/packs");
    assert_eq!(mode(&packs), 0o700);
    let made: Vec<_> = std::fs::read_dir(&packs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(mode(&made[0]), 0o700);
    let files: Vec<_> = std::fs::read_dir(&made[0]).unwrap().flatten().collect();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
    }
}
