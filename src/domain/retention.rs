//! Retention rules as plain logic (issue #18): the master's rules, inherited by every client, a client's stricter
//! override, what a change counts as (a tightening or not), and which period the purge job applies now.
//!
//! A period is a number of days; `None` is no limit (a master rule that is off, or a client that adds nothing to
//! the master's). The effective period of a client is the stricter of the master's and its own. A tightening (a
//! rule turned on or its period shortened) reaches the purge job only [`TIGHTENING_WAIT`] later: until then the
//! job applies the value that was in force before (`previous_days`), so the preview can be checked and a mistake
//! undone before anything is deleted (deleting is final). A loosening applies at once.

use chrono::{DateTime, Utc};

/// How long a tightened rule waits before the purge job applies it.
pub const TIGHTENING_WAIT: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// Longest period, in days (100 years).
pub const MAX_DAYS: i32 = 36_500;

/// The two rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetentionRule {
    /// Recipients whose every binding has been `opt_out` or `bounced` for N days.
    OptedOutOrBounced,
    /// Recipients with no binding for M days.
    Unbound,
}

impl RetentionRule {
    pub const ALL: [Self; 2] = [Self::OptedOutOrBounced, Self::Unbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptedOutOrBounced => "opted_out_or_bounced",
            Self::Unbound => "unbound",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

/// The stricter of two periods (the shorter; any period is stricter than none).
pub fn stricter(a: Option<i32>, b: Option<i32>) -> Option<i32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The looser of two periods (the longer; none is looser than any).
pub fn looser(a: Option<i32>, b: Option<i32>) -> Option<i32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        _ => None,
    }
}

/// Whether going from `old` to `new` tightens the rule (turns it on or shortens it).
pub fn tightens(old: Option<i32>, new: Option<i32>) -> bool {
    match (old, new) {
        (None, Some(_)) => true,
        (Some(o), Some(n)) => n < o,
        _ => false,
    }
}

/// One stored rule (the master's or a client's override).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleState {
    /// The period as set.
    pub days: Option<i32>,
    /// While a tightening waits: the period the job applies meanwhile.
    pub previous_days: Option<i32>,
    /// When the rule was last tightened.
    pub tightened_at: Option<DateTime<Utc>>,
}

impl RuleState {
    /// Whether a tightening is still waiting at `now`.
    pub fn waiting(&self, now: DateTime<Utc>) -> bool {
        self.tightened_at
            .is_some_and(|at| now - at < TIGHTENING_WAIT)
    }

    /// The period the purge job applies at `now`.
    pub fn in_force(&self, now: DateTime<Utc>) -> Option<i32> {
        if self.waiting(now) {
            self.previous_days
        } else {
            self.days
        }
    }

    /// When the period as set reaches the job (`None`: it already has).
    pub fn in_force_from(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tightened_at
            .filter(|_| self.waiting(now))
            .map(|at| at + TIGHTENING_WAIT)
    }

    /// The rule after setting it to `days` at `now`. A tightening (re)starts the wait, keeping in force what was in
    /// force; a loosening during a wait also loosens what is in force meanwhile (never stricter than before).
    pub fn set(&self, days: Option<i32>, now: DateTime<Utc>) -> Self {
        if tightens(self.days, days) {
            Self {
                days,
                previous_days: self.in_force(now),
                tightened_at: Some(now),
            }
        } else if self.waiting(now) {
            Self {
                days,
                previous_days: looser(self.previous_days, days),
                tightened_at: self.tightened_at,
            }
        } else {
            Self {
                days,
                previous_days: None,
                tightened_at: self.tightened_at,
            }
        }
    }
}

/// A client's view of one rule: the master's and its own override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientRule {
    pub master: RuleState,
    pub client: RuleState,
}

impl ClientRule {
    /// The period as set (what the preview counts with).
    pub fn effective(&self) -> Option<i32> {
        stricter(self.master.days, self.client.days)
    }

    /// The period the purge job applies at `now`.
    pub fn in_force(&self, now: DateTime<Utc>) -> Option<i32> {
        stricter(self.master.in_force(now), self.client.in_force(now))
    }
}

/// Why an override is refused: it would be looser than the master's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{rule}_days: {days} days is longer than the master's {master} days; a client's rule may only be stricter"
)]
pub struct LooserThanMaster {
    pub rule: &'static str,
    pub days: i32,
    pub master: i32,
}

/// Checks that a client's override of `rule` is not looser than the master's period (`None` adds nothing and is
/// always allowed: the client keeps the master's rule; an override can never turn a master's rule off).
pub fn check_override(
    rule: RetentionRule,
    master: Option<i32>,
    days: Option<i32>,
) -> Result<(), LooserThanMaster> {
    match (master, days) {
        (Some(master), Some(days)) if days > master => Err(LooserThanMaster {
            rule: rule.as_str(),
            days,
            master,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + chrono::TimeDelta::hours(hours)
    }

    #[test]
    fn a_tightening_waits_a_day_and_keeps_what_was_in_force_meanwhile() {
        let rule = RuleState::default().set(Some(30), at(0));
        assert_eq!(
            rule.in_force(at(1)),
            None,
            "turning a rule on is a tightening"
        );
        assert_eq!(rule.in_force(at(24)), Some(30));
        let shorter = rule.set(Some(7), at(30));
        assert_eq!(shorter.in_force(at(31)), Some(30));
        assert_eq!(shorter.in_force_from(at(31)), Some(at(54)));
        assert_eq!(shorter.in_force(at(54)), Some(7));
        // Tightening again during the wait restarts it and keeps the older value in force.
        let again = shorter.set(Some(3), at(40));
        assert_eq!(again.in_force(at(60)), Some(30));
        assert_eq!(again.in_force(at(64)), Some(3));
    }

    #[test]
    fn a_loosening_applies_at_once_even_during_a_wait() {
        let rule = RuleState::default()
            .set(Some(30), at(0))
            .set(Some(7), at(30));
        let off = rule.set(None, at(31));
        assert_eq!(off.in_force(at(31)), None);
        let longer = rule.set(Some(60), at(31));
        assert_eq!(longer.in_force(at(31)), Some(60));
        let between = rule.set(Some(10), at(31));
        assert_eq!(between.in_force(at(31)), Some(30), "still waiting");
        assert_eq!(between.in_force(at(54)), Some(10));
    }

    #[test]
    fn the_effective_rule_is_the_stricter_of_master_and_override_and_overrides_are_stricter_only() {
        let master = RuleState::default().set(Some(30), at(-48));
        let client = RuleState::default().set(Some(10), at(0));
        let both = ClientRule { master, client };
        assert_eq!(both.effective(), Some(10));
        assert_eq!(both.in_force(at(1)), Some(30));
        assert_eq!(both.in_force(at(24)), Some(10));
        assert!(check_override(RetentionRule::Unbound, Some(30), Some(31)).is_err());
        assert!(check_override(RetentionRule::Unbound, Some(30), Some(30)).is_ok());
        assert!(check_override(RetentionRule::Unbound, Some(30), None).is_ok());
        assert!(check_override(RetentionRule::Unbound, None, Some(9999)).is_ok());
    }
}
