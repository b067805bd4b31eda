//! A machine taken away mid-script (the backend saw its instance go): the target starts
//! again on a fresh machine and succeeds, or fails as `machine_reclaimed` with no retries
//! left; either way every machine it had is torn down exactly once.

use std::time::Duration;

use super::*;

/// The target's first machine is taken away half a second into its script.
fn reclaimed(w: &World, retries: u32) -> (FakeBackend, Arc<Shared>) {
    let after = Duration::from_millis(500);
    let (mut b, shared) = fake(w, &[("spot", Behaviour::Reclaimed { after })]);
    b.retries_on_reclaim = retries;
    (b, shared)
}

fn reclaim_events(rx: &mut UnboundedReceiver<Event>) -> Vec<(String, bool)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|e| match e {
            Event::MachineReclaimed {
                target,
                reason,
                retrying,
                ..
            } => {
                assert_eq!(target, "spot");
                Some((reason, retrying))
            }
            _ => None,
        })
        .collect()
}

fn count(journal: &[String], line: &str) -> usize {
    journal.iter().filter(|l| *l == line).count()
}

#[tokio::test]
async fn a_target_whose_machine_is_reclaimed_mid_script_succeeds_on_a_fresh_one() {
    let w = World::new();
    let (b, shared) = reclaimed(&w, 1);
    let (run, mut rx) = w.run_with_events(b, false, None);
    let results = dispatch(&w, run, &["spot".into()], None, false).await;
    assert_eq!(results[0].outcome, Outcome::Succeeded, "{:?}", results[0]);
    let journal = shared.journal();
    // Two machines, each provisioned once and torn down once; the first went before the
    // second was launched (nothing of it carried over).
    assert_eq!(count(&journal, "launch spot"), 2, "{journal:?}");
    assert_eq!(count(&journal, "provision spot"), 2, "{journal:?}");
    assert_eq!(count(&journal, "teardown spot"), 2, "{journal:?}");
    let first_teardown = journal.iter().position(|l| l == "teardown spot").unwrap();
    let second_launch = journal.iter().rposition(|l| l == "launch spot").unwrap();
    assert!(first_teardown < second_launch, "{journal:?}");
    assert_eq!(
        reclaim_events(&mut rx),
        [("terminated from outside (fake)".to_owned(), true)]
    );
    assert!(w.machine_dirs().is_empty());
}

#[tokio::test]
async fn with_no_retries_left_a_reclaim_is_its_own_kind_of_failure() {
    let w = World::new();
    let (b, shared) = reclaimed(&w, 0);
    let (run, mut rx) = w.run_with_events(b, false, None);
    let results = dispatch(&w, run, &["spot".into()], None, false).await;
    let r = &results[0];
    assert_eq!(r.failure, Some(FailureKind::MachineReclaimed), "{r:?}");
    let error = r.error.as_deref().unwrap();
    assert!(
        error.contains("spot") && error.contains("terminated from outside"),
        "{error}"
    );
    assert_eq!(count(&shared.journal(), "launch spot"), 1);
    assert_eq!(count(&shared.journal(), "teardown spot"), 1);
    assert_eq!(
        reclaim_events(&mut rx),
        [("terminated from outside (fake)".to_owned(), false)]
    );
    assert!(w.machine_dirs().is_empty());
}
