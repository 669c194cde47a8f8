//! Passive health of one pool member: a circuit breaker kept in atomics, no lock.
//!
//! Closed: traffic flows and failures are counted. After `eject_after` consecutive failures the
//! member is ejected (open) for a cooldown that doubles on every repeat ejection, capped at
//! `MAX_COOLDOWN_FACTOR` times the base. When the cooldown is over the member is half-open: the
//! first request to claim it re-arms the cooldown (so nobody else follows it) and is the single
//! trial; its success closes the breaker, its failure ejects the member again for longer. A trial
//! that never reports (its client went away) simply lets another trial through one cooldown later.
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The longest cooldown, as a multiple of the configured one.
pub const MAX_COOLDOWN_FACTOR: u32 = 8;

/// When to eject a member and for how long. Built from `--eject-after` and `--eject-cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub eject_after: u32,
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            eject_after: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// What an attempt on a member says about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (any status that is not a server failure).
    Healthy,
    /// It could not be reached, timed out, or answered 500/502/503/504.
    Failed,
    /// It answered 429: busy, not broken. Counts neither way.
    Neutral,
}

/// A member's breaker state. Times are milliseconds since `EPOCH`, 0 meaning "never".
#[derive(Debug, Default)]
pub struct Breaker {
    consecutive_failures: AtomicU32,
    /// Ejections in a row without a success in between; drives the doubling.
    ejections: AtomicU32,
    /// Non-zero while ejected (open, or half-open once passed).
    ejected_until: AtomicU64,
    /// The cooldown of the current ejection, to re-arm it when a trial is let through.
    cooldown_ms: AtomicU64,
    last_failure: AtomicU64,
}

/// Process-wide origin of breaker times; starts at 1 ms so that 0 can mean "never".
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl Breaker {
    /// True while the member is ejected, including while its half-open trial is pending.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) != 0
    }

    /// Milliseconds since the member last failed; `None` if it never did.
    pub fn last_failure_ms(&self) -> Option<u64> {
        match self.last_failure.load(Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    /// May a request go to this member now? Claims the half-open trial when the cooldown is over.
    pub fn try_admit(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // Half-open: whoever moves the deadline forward is the one trial.
        let rearm = now.saturating_add(self.cooldown_ms.load(Ordering::Acquire).max(1));
        self.ejected_until
            .compare_exchange(until, rearm, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records an attempt's verdict. Returns the state change, if any, for the caller to log.
    pub fn record(&self, verdict: Verdict, policy: &BreakerPolicy, now: u64) -> Option<Transition> {
        match verdict {
            Verdict::Neutral => None,
            Verdict::Healthy => {
                self.consecutive_failures.store(0, Ordering::Release);
                if self.ejected_until.swap(0, Ordering::AcqRel) != 0 {
                    self.ejections.store(0, Ordering::Release);
                    return Some(Transition::Readmitted);
                }
                self.ejections.store(0, Ordering::Release);
                None
            }
            Verdict::Failed => {
                self.last_failure.store(now, Ordering::Release);
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                let ejected = self.ejected_until.load(Ordering::Acquire) != 0;
                // A failed half-open trial ejects again at once; a closed member after N failures.
                if !ejected && failures < policy.eject_after.max(1) {
                    return None;
                }
                let ejections = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
                let factor = 1u32
                    .checked_shl(ejections - 1)
                    .unwrap_or(u32::MAX)
                    .min(MAX_COOLDOWN_FACTOR);
                let cooldown = policy.cooldown.saturating_mul(factor);
                let cooldown_ms = u64::try_from(cooldown.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.cooldown_ms.store(cooldown_ms, Ordering::Release);
                self.ejected_until
                    .store(now.saturating_add(cooldown_ms), Ordering::Release);
                Some(Transition::Ejected { cooldown, failures })
            }
        }
    }
}

/// A breaker state change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Ejected { cooldown: Duration, failures: u32 },
    Readmitted,
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        eject_after: 3,
        cooldown: Duration::from_millis(1000),
    };

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let breaker = Breaker::default();
        assert_eq!(breaker.record(Verdict::Failed, &POLICY, 10), None);
        assert_eq!(breaker.record(Verdict::Failed, &POLICY, 11), None);
        assert_eq!(breaker.record(Verdict::Healthy, &POLICY, 12), None);
        assert_eq!(breaker.record(Verdict::Failed, &POLICY, 13), None);
        assert_eq!(breaker.record(Verdict::Neutral, &POLICY, 14), None);
        assert_eq!(breaker.record(Verdict::Failed, &POLICY, 15), None);
        assert!(breaker.try_admit(16));
        assert_eq!(
            breaker.record(Verdict::Failed, &POLICY, 20),
            Some(Transition::Ejected {
                cooldown: Duration::from_millis(1000),
                failures: 3
            })
        );
        assert!(breaker.is_ejected());
        assert!(!breaker.try_admit(500));
        assert!(!breaker.try_admit(1019));
        assert_eq!(breaker.last_failure_ms(), Some(20));
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through_and_its_outcome_decides() {
        let breaker = Breaker::default();
        for now in 1..=3 {
            breaker.record(Verdict::Failed, &POLICY, now);
        }
        // Cooldown over at 1003: one trial, the others wait.
        assert!(breaker.try_admit(1003));
        assert!(!breaker.try_admit(1004));
        assert!(!breaker.try_admit(1500));
        // The trial fails: ejected again for twice as long.
        assert_eq!(
            breaker.record(Verdict::Failed, &POLICY, 1600),
            Some(Transition::Ejected {
                cooldown: Duration::from_millis(2000),
                failures: 4
            })
        );
        assert!(!breaker.try_admit(3599));
        assert!(breaker.try_admit(3600));
        assert_eq!(
            breaker.record(Verdict::Healthy, &POLICY, 3601),
            Some(Transition::Readmitted)
        );
        assert!(!breaker.is_ejected());
        assert!(breaker.try_admit(3602));
        assert_eq!(breaker.consecutive_failures(), 0);
    }

    #[test]
    fn cooldown_doubling_is_capped() {
        let breaker = Breaker::default();
        let mut now = 1;
        let mut last = Duration::ZERO;
        for _ in 0..3 {
            breaker.record(Verdict::Failed, &POLICY, now);
        }
        for _ in 0..10 {
            now += 100_000;
            assert!(breaker.try_admit(now));
            if let Some(Transition::Ejected { cooldown, .. }) =
                breaker.record(Verdict::Failed, &POLICY, now)
            {
                last = cooldown;
            }
        }
        assert_eq!(last, POLICY.cooldown * MAX_COOLDOWN_FACTOR);
    }

    #[test]
    fn an_abandoned_trial_lets_another_through_one_cooldown_later() {
        let breaker = Breaker::default();
        for now in 1..=3 {
            breaker.record(Verdict::Failed, &POLICY, now);
        }
        assert!(breaker.try_admit(1003));
        assert!(!breaker.try_admit(2002));
        assert!(breaker.try_admit(2003));
    }
}
