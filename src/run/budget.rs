//! A run's spend cap (`max_cost`, `max_instance_hours`). Every cloud machine reserves its
//! worst case — its dearest hourly price × the target's timeout — before it is launched; a
//! machine whose worst case does not fit beside what the run has reserved is never launched,
//! and its target is skipped. When a machine is gone, its reservation shrinks to what it ran
//! (at least a minute, EC2's minimum charge), so a later target may still fit. So what runner
//! can be billed for stays under the cap whatever the machines do, and a cap that is never
//! approached costs nothing. Local machines cost nothing and count no instance-hours.
//!
//! The worst case is the target's timeout because runner terminates a machine when it passes;
//! should runner itself die, the machine's `max_lifetime` dead-man switch still ends it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Target;
use crate::machine::Cost;

/// EC2 bills a Linux instance for at least this long.
const MINIMUM_CHARGE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Budget {
    max_cost: Option<f64>,
    max_hours: Option<f64>,
    reserved: Mutex<Spend>,
}

/// Dollars and instance-hours, reserved or run.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Spend {
    pub cost: f64,
    pub hours: f64,
}

/// Why a machine is not launched.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "spend cap: its worst case ({}) would take the run to {} of {}",
    show(self.worst), show(self.total), self.cap
)]
pub struct OverCap {
    pub worst: Spend,
    pub total: Spend,
    pub cap: String,
}

/// One machine's share of the budget, held until the machine is gone.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    per_hour: f64,
    worst: Spend,
    since: Instant,
    /// The machine outlives the run (`--keep-failed`): its worst case stays reserved.
    kept: bool,
}

impl Budget {
    pub fn new(max_cost: Option<f64>, max_hours: Option<f64>) -> Budget {
        Budget {
            max_cost,
            max_hours,
            reserved: Mutex::new(Spend::default()),
        }
    }

    /// A cap in dollars is set: every cloud machine of the run must be priced.
    pub fn needs_prices(&self) -> bool {
        self.max_cost.is_some()
    }

    /// Under a dollar cap, `t`'s machine (of `cost`) must have a price: a cap that cannot
    /// be checked is refused before anything starts.
    pub fn priced(&self, t: &Target, cost: Cost) -> crate::Result<()> {
        if self.needs_prices() && cost == Cost::Unpriced {
            return Err(crate::Error::Unpriced {
                target: t.name.clone(),
                builder: t.builder.path.clone(),
            });
        }
        Ok(())
    }

    /// What the run has reserved so far.
    pub fn reserved(&self) -> Spend {
        *self.reserved.lock().unwrap()
    }

    /// The worst case of a machine of `cost` held for `hold`; `None` for a local one.
    pub fn worst_case(cost: Cost, hold: Duration) -> Option<Spend> {
        let hours = hold.as_secs_f64() / 3600.0;
        match cost {
            Cost::Local => None,
            Cost::PerHour(p) => Some(Spend {
                cost: p * hours,
                hours,
            }),
            // Only a run without a dollar cap gets here (see `needs_prices`).
            Cost::Unpriced => Some(Spend { cost: 0.0, hours }),
        }
    }

    /// Reserves a machine of `cost` held at most `hold`, or says why it may not start.
    pub fn reserve(
        self: &Arc<Self>,
        cost: Cost,
        hold: Duration,
    ) -> Result<Option<Reservation>, OverCap> {
        let Some(worst) = Budget::worst_case(cost, hold) else {
            return Ok(None);
        };
        let mut reserved = self.reserved.lock().unwrap();
        let total = Spend {
            cost: reserved.cost + worst.cost,
            hours: reserved.hours + worst.hours,
        };
        let over = |cap: Option<f64>, v: f64| cap.is_some_and(|c| v > c + 1e-9);
        if over(self.max_cost, total.cost) || over(self.max_hours, total.hours) {
            return Err(OverCap {
                worst,
                total,
                cap: self.describe_cap(),
            });
        }
        *reserved = total;
        Ok(Some(Reservation {
            budget: self.clone(),
            per_hour: if let Cost::PerHour(p) = cost { p } else { 0.0 },
            worst,
            since: Instant::now(),
            kept: false,
        }))
    }

    fn describe_cap(&self) -> String {
        let cost = self.max_cost.map(|c| format!("max_cost ${c:.4}"));
        let hours = self.max_hours.map(|h| format!("max_instance_hours {h}"));
        let caps: Vec<String> = cost.into_iter().chain(hours).collect();
        caps.join(" and ")
    }
}

impl Reservation {
    /// The machine is kept running past the run: its worst case stays reserved.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

/// The machine is gone: what it ran replaces its worst case.
impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let ran = self.since.elapsed().max(MINIMUM_CHARGE).as_secs_f64() / 3600.0;
        let ran = ran.min(self.worst.hours);
        let mut reserved = self.budget.reserved.lock().unwrap();
        reserved.cost -= self.worst.cost - self.per_hour * ran;
        reserved.hours -= self.worst.hours - ran;
    }
}

/// `$0.0052, 0.50 instance-hours`.
pub fn show(s: Spend) -> String {
    format!("${:.4}, {:.2} instance-hours", s.cost, s.hours)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn machines_past_the_cap_are_refused_and_a_finished_one_frees_its_worst_case() {
        let b = Arc::new(Budget::new(Some(2.5), None));
        let one = b.reserve(Cost::PerHour(1.0), HOUR).unwrap().unwrap();
        let two = b.reserve(Cost::PerHour(1.0), HOUR).unwrap().unwrap();
        let err = b.reserve(Cost::PerHour(1.0), HOUR).unwrap_err();
        assert_eq!(err.total.cost, 3.0);
        assert!(err.to_string().contains("max_cost $2.5000"), "{err}");
        // Local machines never count.
        assert!(b.reserve(Cost::Local, HOUR).unwrap().is_none());
        drop(one);
        // A machine that ran under a minute is charged the minimum minute.
        let left = b.reserved();
        assert!((left.cost - (1.0 + 1.0 / 60.0)).abs() < 1e-3, "{left:?}");
        let three = b.reserve(Cost::PerHour(1.0), HOUR).unwrap().unwrap();
        // A kept machine keeps its worst case.
        three.keep();
        drop(two);
        assert!((b.reserved().cost - (1.0 + 2.0 / 60.0)).abs() < 1e-3);
    }

    #[test]
    fn instance_hours_cap_unpriced_machines_too() {
        let b = Arc::new(Budget::new(None, Some(1.5)));
        assert!(!b.needs_prices());
        let _one = b.reserve(Cost::Unpriced, HOUR).unwrap().unwrap();
        let err = b.reserve(Cost::Unpriced, HOUR).unwrap_err();
        assert!(err.to_string().contains("max_instance_hours 1.5"), "{err}");
    }
}
