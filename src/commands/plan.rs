//! `runner build --plan`: the machines a run would launch, their kind and worst-case cost,
//! and which the spend cap would keep from launching, without starting, baking, resolving
//! or connecting to anything. The cap is applied as the run applies it, with every machine
//! held for its whole timeout (a real run gives back what finished machines did not use, so
//! it may launch more than the plan, never less).

use std::sync::Arc;

use serde::Serialize;

use super::{Env, Exit};
use crate::config::{Project, Target};
use crate::error::Result;
use crate::progress::Format;
use crate::run::budget::{Budget, Spend, show};

/// One target's line of the plan.
#[derive(Serialize)]
struct Line {
    target: String,
    builder: String,
    machine: String,
    timeout_seconds: u64,
    /// Dollars at worst; `None` for a local machine (or an unpriced one without a cap).
    worst_cost: Option<f64>,
    instance_hours: f64,
    /// Why the run would not launch it.
    skipped: Option<String>,
}

#[derive(Serialize)]
struct Plan {
    targets: Vec<Line>,
    launched: usize,
    skipped: usize,
    worst_cost: f64,
    instance_hours: f64,
}

pub fn print(
    env: &Env,
    project: &Project,
    targets: &[Target],
    max_cost: Option<f64>,
) -> Result<Exit> {
    let limits = project.limits;
    let budget = Arc::new(Budget::new(
        max_cost.or(limits.max_cost),
        limits.max_instance_hours,
    ));
    let mut held = vec![];
    let mut lines = vec![];
    for t in targets {
        let backend = env.machines.backend(&t.builder);
        let cost = backend.cost();
        budget.priced(t, cost)?;
        let worst = Budget::worst_case(cost, t.timeout);
        let skipped = match budget.reserve(cost, t.timeout) {
            Ok(r) => {
                held.extend(r);
                None
            }
            Err(over) => Some(over.to_string()),
        };
        lines.push(Line {
            target: t.name.clone(),
            builder: t.builder.path.display().to_string(),
            machine: backend.summary(),
            timeout_seconds: t.timeout.as_secs(),
            worst_cost: worst
                .filter(|_| cost != crate::machine::Cost::Unpriced)
                .map(|w| w.cost),
            instance_hours: worst.map_or(0.0, |w| w.hours),
            skipped,
        });
    }
    let total = budget.reserved();
    // Every reservation is still held, so `total` is the run's worst case.
    let plan = Plan {
        launched: lines.iter().filter(|l| l.skipped.is_none()).count(),
        skipped: lines.iter().filter(|l| l.skipped.is_some()).count(),
        targets: lines,
        worst_cost: total.cost,
        instance_hours: total.hours,
    };
    match env.format {
        Format::Json => super::print_json(&plan),
        _ => print_table(&plan, total),
    }
    // Forget the reservations without settling them: nothing ran.
    held.into_iter().for_each(|r| r.keep());
    Ok(Exit::Success)
}

fn print_table(plan: &Plan, total: Spend) {
    let width = |f: fn(&Line) -> usize, head: &str| {
        plan.targets
            .iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(head.len())
    };
    let (tw, mw) = (
        width(|l| l.target.len(), "TARGET"),
        width(|l| l.machine.len(), "MACHINE"),
    );
    println!(
        "{:tw$}  {:mw$}  {:>8}  {:>10}  LAUNCH",
        "TARGET", "MACHINE", "TIMEOUT", "WORST CASE"
    );
    for l in &plan.targets {
        let timeout = humantime::format_duration(std::time::Duration::from_secs(l.timeout_seconds));
        let cost = match (l.worst_cost, l.instance_hours) {
            (Some(c), _) => format!("${c:.4}"),
            (None, h) if h > 0.0 => "unpriced".to_owned(),
            _ => "local".to_owned(),
        };
        let launch = l
            .skipped
            .as_deref()
            .map_or("yes".to_owned(), |s| format!("no: {s}"));
        println!(
            "{:tw$}  {:mw$}  {:>8}  {:>10}  {launch}",
            l.target,
            l.machine,
            timeout.to_string(),
            cost
        );
    }
    println!(
        "\n{} machine(s) would launch, {} skipped; worst case {}; nothing was started",
        plan.launched,
        plan.skipped,
        show(total)
    );
}
