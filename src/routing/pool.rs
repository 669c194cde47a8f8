//! A pool: every endpoint that serves one (exposed model, path), picked by smooth weighted
//! round-robin, skipping members their circuit breaker ejected.
//!
//! Selection is lock-free: nginx's smooth weighted round-robin is deterministic, so the whole
//! cycle (length = the sum of the integer weights) is computed once when the pool is built and
//! requests walk it with one atomic counter. Weights are numbers > 0; they become integers by
//! keeping three decimals (`0.5` and `1.5` are `1:3`), dividing by their greatest common divisor,
//! and, only when the cycle would be longer than `MAX_SCHEDULE`, scaling down proportionally
//! (each member keeping at least one slot), which makes the ratio approximate to 1/`MAX_SCHEDULE`.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::breaker::now_ms;
use super::endpoint::Endpoint;

/// The longest precomputed cycle.
pub const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug)]
pub struct Pool {
    members: Box<[Arc<Endpoint>]>,
    /// Member indexes in smooth weighted round-robin order, one full cycle.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Pool {
    /// Builds a pool; `None` without members.
    pub fn new(members: Vec<Arc<Endpoint>>) -> Option<Self> {
        if members.is_empty() {
            return None;
        }
        let weights = integer_weights(&members.iter().map(|m| m.weight).collect::<Vec<_>>());
        Some(Self {
            schedule: smooth_schedule(&weights).into_boxed_slice(),
            members: members.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        })
    }

    /// Every member in load order; each one's `breaker` tells whether it is ejected.
    pub fn members(&self) -> &[Arc<Endpoint>] {
        &self.members
    }

    /// The member that serves the next request: see `select`.
    pub fn pick(&self) -> &Arc<Endpoint> {
        &self.members[self.select()]
    }

    /// The index of the member for a request's first attempt: the next one in weighted order
    /// that its breaker admits. Only first attempts advance the cursor, so retries never shift
    /// the weights (issue 12: a failing member used to get every first attempt). When every
    /// member is ejected, the one that failed least recently, rather than nobody.
    pub fn select(&self) -> usize {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.walk(start, None)
    }

    /// The index of the member for a retry after `failed` failed: the next one in weighted order
    /// from where first attempts are, other than `failed` when another is up. The cursor stays
    /// where it is.
    pub fn select_after_failure(&self, failed: usize) -> usize {
        let start = self.cursor.load(Ordering::Relaxed);
        self.walk(start, Some(failed))
    }

    fn walk(&self, start: usize, avoid: Option<usize>) -> usize {
        if self.members.len() == 1 {
            return 0;
        }
        let cycle = self.schedule.len();
        let now = now_ms();
        for step in 0..cycle {
            let index = self.schedule[start.wrapping_add(step) % cycle] as usize;
            if Some(index) == avoid {
                continue;
            }
            if self.members[index].breaker.try_admit(now) {
                return index;
            }
        }
        match avoid {
            Some(avoid) if self.members[avoid].breaker.try_admit(now) => avoid,
            _ => self.least_recently_failed(),
        }
    }

    fn least_recently_failed(&self) -> usize {
        self.members
            .iter()
            .enumerate()
            .min_by_key(|(_, member)| member.breaker.last_failure_ms().unwrap_or(0))
            .map_or(0, |(index, _)| index)
    }
}

/// Weights (> 0) as small integers with the same ratios; see the module comment.
fn integer_weights(weights: &[f64]) -> Vec<u64> {
    let mut integers: Vec<u64> = weights
        .iter()
        .map(|w| {
            let scaled = (w * 1000.0).round();
            if scaled.is_finite() && scaled >= 1.0 {
                // Saturates for absurd weights; the scaling below keeps the cycle bounded.
                scaled as u64
            } else {
                1
            }
        })
        .collect();
    let divisor = integers.iter().copied().fold(0, gcd).max(1);
    for weight in &mut integers {
        *weight /= divisor;
    }
    let total: u64 = integers
        .iter()
        .map(|w| u128::from(*w))
        .sum::<u128>()
        .try_into()
        .unwrap_or(u64::MAX);
    if total > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for weight in &mut integers {
            *weight = ((*weight as f64 * scale).round() as u64).max(1);
        }
    }
    integers
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One cycle of nginx's smooth weighted round-robin: every step each member's current weight
/// grows by its weight, the largest (first on ties) is chosen and loses the total.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| i64::try_from(*w).unwrap_or(i64::MAX))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (index, weight) in weights.iter().enumerate() {
            current[index] += weight;
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        schedule.push(u32::try_from(best).unwrap_or(0));
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::breaker::{BreakerPolicy, Verdict};
    use crate::routing::endpoint::tests::endpoint_with_weight;
    use std::time::Duration;

    fn pool(weights: &[f64]) -> Pool {
        Pool::new(
            weights
                .iter()
                .map(|w| Arc::new(endpoint_with_weight(*w)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn weights_become_small_integers_with_the_same_ratio() {
        for (weights, expected) in [
            (vec![1.0, 3.0], vec![1, 3]),
            (vec![0.5, 1.5], vec![1, 3]),
            (vec![2.0, 2.0, 2.0], vec![1, 1, 1]),
            (vec![0.0001, 1.0], vec![1, 1000]),
            (vec![1.0, 1e12], vec![1, 4096]),
        ] {
            assert_eq!(integer_weights(&weights), expected, "{weights:?}");
        }
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_interleaved() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let pool = pool(&[1.0, 3.0]);
        let picks: Vec<usize> = (0..400).map(|_| pool.select()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 100);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 300);
        // Interleaved: the light member never comes twice in a row, the heavy one at most 3 times.
        assert!(picks.windows(2).all(|w| w != [0, 0]));
        assert!(picks.windows(4).all(|w| w != [1, 1, 1, 1]));
    }

    #[test]
    fn retries_do_not_move_the_first_attempts_off_their_weights() {
        // Issue 12: every retry advanced the cursor, so in a two-member pool with one failing
        // member, the failing one got every first attempt.
        let pool = pool(&[1.0, 1.0]);
        let firsts: Vec<usize> = (0..100)
            .map(|_| {
                let first = pool.select();
                if first == 0 {
                    assert_eq!(pool.select_after_failure(first), 1);
                }
                first
            })
            .collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 50);
    }

    #[test]
    fn ejected_members_are_skipped_and_the_failed_one_is_avoided() {
        let pool = pool(&[1.0, 1.0, 1.0]);
        let policy = BreakerPolicy {
            eject_after: 1,
            cooldown: Duration::from_secs(60),
        };
        pool.members()[1]
            .breaker
            .record(Verdict::Failed, &policy, now_ms());
        for _ in 0..30 {
            assert_ne!(pool.select(), 1);
            assert_ne!(pool.select_after_failure(0), 0);
        }
        // Alone, the avoided member is still chosen.
        let single = super::tests::pool(&[1.0]);
        assert_eq!(single.select_after_failure(0), 0);
    }

    #[test]
    fn when_every_member_is_ejected_the_least_recently_failed_one_is_tried() {
        let pool = pool(&[1.0, 1.0, 1.0]);
        let policy = BreakerPolicy {
            eject_after: 1,
            cooldown: Duration::from_secs(60),
        };
        let now = now_ms();
        for (index, at) in [(0, now + 3), (1, now + 1), (2, now + 2)] {
            pool.members()[index]
                .breaker
                .record(Verdict::Failed, &policy, at);
        }
        assert_eq!(pool.select(), 1);
        assert_eq!(pool.select_after_failure(1), 1);
    }
}
