//! The spend cap: a machine whose worst case would pass the run's cap is never launched, and a
//! finished machine gives back all but its minimum minute.

use super::*;

#[tokio::test]
async fn machines_past_the_spend_cap_are_never_launched_and_finished_ones_give_back() {
    let w = World::new();
    let hour = Duration::from_secs(3600);
    let opts = Options {
        jobs: Some(1),
        keep_going: true,
    };
    let capped = |targets: Vec<Target>| {
        // $1 an hour under a $1.50 cap.
        let (mut b, shared) = fake(&w, &[]);
        b.cost = crate::machine::Cost::PerHour(1.0);
        let run = w.run_capped(b, false, Some(1.5));
        (run.clone(), run.local(targets), shared)
    };
    // One hour each, one at a time: each finished machine gives back all but its minimum
    // minute, so all three fit.
    let (run, planned, _) = capped(names(3).iter().map(|n| w.target(n, hour)).collect());
    let results = crate::run::dispatch::run(run, planned, &opts).await;
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Succeeded),
        "{results:?}"
    );
    // Two hours at worst never fit: skipped by name, and never launched.
    let (run, planned, shared) = capped(vec![w.target("dear", 2 * hour)]);
    let results = crate::run::dispatch::run(run, planned, &opts).await;
    assert_eq!(results[0].outcome, Outcome::Skipped);
    assert_eq!(results[0].failure, Some(FailureKind::SpendCap));
    let error = results[0].error.as_deref().unwrap();
    assert!(error.starts_with("dear skipped: spend cap:"), "{error}");
    assert!(error.contains("max_cost $1.5000"), "{error}");
    assert!(shared.journal().iter().all(|l| !l.starts_with("launch")));
}
