//! Where limit counters live: the `CounterStore` trait (one call per admission, all or nothing)
//! and its in-memory implementation. The store shared by several replicas
//! (`shared::limits::RedisCounters`, with `--redis-url`) implements the same trait with the same
//! decisions in one round trip per admission: `acquire` is one script over every charge.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use smallvec::SmallVec;

use super::key::KeyDigest;
use super::limits::{self, CounterState, Measure, Reading, Rule};

/// Which counter a charge goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterKey {
    /// One of a key's own limits: keyed by its digest, so editing the key's limits or name keeps
    /// what it used.
    Key { digest: KeyDigest, limit: KeyLimit },
    /// A quota policy's or override's counter. `rule` names the policy (path, model, window) or
    /// the override (with its owner); `owner` is the bucket, `None` for a global policy.
    Quota {
        rule: Arc<str>,
        measure: Measure,
        owner: Option<Arc<str>>,
    },
}

impl Hash for CounterKey {
    /// A key's counters hash eight bytes of its digest, not all 32: a digest is SHA-256 output,
    /// uniformly random, and only keys in the table get counters (nobody outside picks them), so
    /// eight bytes keep counters apart as well. The memory store hashes every charge twice (its
    /// shard, then its map), and the 32 bytes cost about 0.2k instructions per admission
    /// (issue 16). Equal keys still hash equally: this reads a part of what `Eq` compares.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Self::Key { digest, limit } => {
                let mut head = [0u8; 8];
                head.copy_from_slice(&digest.0[..8]);
                state.write_u64(u64::from_le_bytes(head));
                state.write_u8(*limit as u8);
            }
            Self::Quota {
                rule,
                measure,
                owner,
            } => {
                state.write_u8(u8::MAX);
                rule.hash(state);
                measure.hash(state);
                owner.hash(state);
            }
        }
    }
}

/// The limits a key can carry, as named in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyLimit {
    RequestsPerMinute,
    RequestsPerHour,
    RequestsPerDay,
    TokensPerMinute,
    TokensPerDay,
    MonthlyTokenBudget,
    MaxConcurrentRequests,
}

impl KeyLimit {
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::RequestsPerHour => "requests_per_hour",
            Self::RequestsPerDay => "requests_per_day",
            Self::TokensPerMinute => "tokens_per_minute",
            Self::TokensPerDay => "tokens_per_day",
            Self::MonthlyTokenBudget => "monthly_token_budget",
            Self::MaxConcurrentRequests => "max_concurrent_requests",
        }
    }
}

/// One limit a request must pass: `cost` units against `rule` on `counter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub counter: CounterKey,
    pub rule: Rule,
    pub cost: u64,
}

/// A change to a counter after admission (settled tokens, refunds, released slots).
#[derive(Debug, Clone, PartialEq)]
pub struct Adjustment {
    pub counter: CounterKey,
    pub rule: Rule,
    pub delta: i64,
}

/// The outcome of one admission's charges: applied all (`admitted`) or none.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    pub admitted: bool,
    /// One reading per charge, in the charges' order: after charging when admitted.
    pub readings: SmallVec<[Reading; 4]>,
}

/// The store could not be asked (a shared store's connection failed): the caller decides.
#[derive(Debug, thiserror::Error)]
#[error("the limit store is unavailable: {0}")]
pub struct StoreError(pub String);

/// Limit counters. Implementations apply an admission's charges atomically: either every charge
/// fits and all are applied, or none is (a refused request uses nothing).
pub trait CounterStore: Send + Sync {
    fn acquire<'a>(
        &'a self,
        now_ms: u64,
        charges: &'a [Charge],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>>;

    /// `acquire` for a store that needs no IO (counters in this process's memory): the outcome
    /// at once, without a future to allocate and move. `None`: ask `acquire`.
    fn acquire_at_once(
        &self,
        _now_ms: u64,
        _charges: &[Charge],
    ) -> Option<Result<Acquired, StoreError>> {
        None
    }

    /// Applies changes that cannot be refused. Called from `Drop`, so it must not block on IO
    /// (a shared store sends them in the background).
    fn adjust(&self, now_ms: u64, adjustments: &[Adjustment]);
}

/// Counters in this process's memory, in shards locked in index order (an admission touching
/// several shards cannot deadlock with another). Idle counters are evicted as shards grow.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: CounterHasher,
}

/// Seeded per process like std's `RandomState`, but foldhash rather than SipHash: the keys are
/// key digests and config names, hashed twice per charge (shard, then map), and SipHash was
/// most of an admission's hashing (issue 16).
type CounterHasher = foldhash::fast::RandomState;

struct Shard {
    counters: HashMap<CounterKey, CounterState, CounterHasher>,
    /// Sweep idle counters when the shard reaches this size; doubles with what survives.
    sweep_at: usize,
}

const SHARDS: usize = 32;
const MIN_SWEEP: usize = 1024;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        counters: HashMap::default(),
                        sweep_at: MIN_SWEEP,
                    })
                })
                .collect(),
            hasher: CounterHasher::default(),
        }
    }

    /// Counters held now (idle ones included until their shard is swept).
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|i| self.lock(i).counters.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle counter now (the shards also do it as they grow).
    pub fn sweep(&self, now_ms: u64) {
        for index in 0..self.shards.len() {
            self.lock(index).sweep(now_ms);
        }
    }

    /// The synchronous heart of [`CounterStore::acquire`].
    pub fn acquire_now(&self, now_ms: u64, charges: &[Charge]) -> Acquired {
        if let [charge] = charges {
            return self.acquire_one(now_ms, charge);
        }
        let shard_of: SmallVec<[usize; 8]> = charges
            .iter()
            .map(|charge| self.shard_index(&charge.counter))
            .collect();
        let mut order = shard_of.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, MutexGuard<'_, Shard>); 8]> =
            order.iter().map(|&i| (i, self.lock(i))).collect();
        let mut readings: SmallVec<[Reading; 4]> = SmallVec::new();
        let mut updates: SmallVec<[Option<CounterState>; 8]> = SmallVec::new();
        for (charge, shard) in charges.iter().zip(&shard_of) {
            let guard = guard_of(&mut guards, *shard);
            let state = guard.counters.get(&charge.counter).copied();
            let (reading, after) = limits::check(charge.rule, state, charge.cost, now_ms);
            readings.push(reading);
            updates.push(after);
        }
        let admitted = updates.iter().all(Option::is_some);
        if !admitted {
            // Nothing is charged: the limits that would have fit show what they have now.
            for ((charge, shard), reading) in charges.iter().zip(&shard_of).zip(&mut readings) {
                if reading.retry_after.is_zero() {
                    let state = guard_of(&mut guards, *shard)
                        .counters
                        .get(&charge.counter)
                        .copied();
                    *reading = limits::check(charge.rule, state, 0, now_ms).0;
                }
            }
        }
        if admitted {
            for ((charge, shard), after) in charges.iter().zip(&shard_of).zip(updates) {
                if let Some(after) = after {
                    guard_of(&mut guards, *shard)
                        .counters
                        .insert(charge.counter.clone(), after);
                }
            }
        }
        for (_, guard) in &mut guards {
            if guard.counters.len() >= guard.sweep_at {
                guard.sweep(now_ms);
            }
        }
        Acquired { admitted, readings }
    }

    /// [`MemoryStore::acquire_now`] for one charge (most admissions: a key with one limit), the
    /// same decision with one shard and one lookup: the state is updated where it is.
    fn acquire_one(&self, now_ms: u64, charge: &Charge) -> Acquired {
        let mut shard = self.lock(self.shard_index(&charge.counter));
        let state = shard.counters.get_mut(&charge.counter);
        let (reading, after) =
            limits::check(charge.rule, state.as_deref().copied(), charge.cost, now_ms);
        let admitted = after.is_some();
        match (state, after) {
            (Some(state), Some(after)) => *state = after,
            (None, Some(after)) => {
                shard.counters.insert(charge.counter.clone(), after);
                if shard.counters.len() >= shard.sweep_at {
                    shard.sweep(now_ms);
                }
            }
            // Refused: nothing is charged, and its reading is the refusal's.
            (_, None) => {}
        }
        let mut readings = SmallVec::new();
        readings.push(reading);
        Acquired { admitted, readings }
    }

    fn shard_index(&self, key: &CounterKey) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard leaves counters that are still valid numbers.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn guard_of<'g, 's>(
    guards: &'g mut [(usize, MutexGuard<'s, Shard>)],
    shard: usize,
) -> &'g mut MutexGuard<'s, Shard> {
    let at = guards.partition_point(|(index, _)| *index < shard);
    &mut guards[at].1
}

impl Shard {
    fn sweep(&mut self, now_ms: u64) {
        self.counters
            .retain(|_, state| !limits::is_idle(*state, now_ms));
        self.sweep_at = (self.counters.len() * 2).max(MIN_SWEEP);
    }
}

impl CounterStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        now_ms: u64,
        charges: &'a [Charge],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        let acquired = self.acquire_now(now_ms, charges);
        Box::pin(std::future::ready(Ok(acquired)))
    }

    fn acquire_at_once(
        &self,
        now_ms: u64,
        charges: &[Charge],
    ) -> Option<Result<Acquired, StoreError>> {
        Some(Ok(self.acquire_now(now_ms, charges)))
    }

    fn adjust(&self, now_ms: u64, adjustments: &[Adjustment]) {
        for adjustment in adjustments {
            let mut shard = self.lock(self.shard_index(&adjustment.counter));
            let state = shard.counters.get(&adjustment.counter).copied();
            let after = limits::adjust(adjustment.rule, state, adjustment.delta, now_ms);
            if limits::is_idle(after, now_ms) {
                shard.counters.remove(&adjustment.counter);
            } else {
                shard.counters.insert(adjustment.counter.clone(), after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::access::limits::Window;

    const NOW: u64 = 1_796_119_200_000;

    fn key_charge(byte: u8, limit: KeyLimit, rule: Rule, cost: u64) -> Charge {
        Charge {
            counter: CounterKey::Key {
                digest: KeyDigest([byte; 32]),
                limit,
            },
            rule,
            cost,
        }
    }

    #[test]
    fn a_refused_charge_applies_none_of_the_others() {
        let store = MemoryStore::new();
        let minute = key_charge(
            1,
            KeyLimit::RequestsPerMinute,
            Rule::Smooth { limit: 10 },
            1,
        );
        let hour = key_charge(
            1,
            KeyLimit::RequestsPerHour,
            Rule::windowed(2, Window::Hour),
            1,
        );
        let charges = [minute.clone(), hour];
        assert!(store.acquire_now(NOW, &charges).admitted);
        assert!(store.acquire_now(NOW, &charges).admitted);
        let refused = store.acquire_now(NOW, &charges);
        assert!(!refused.admitted);
        assert_eq!(refused.readings[0].remaining, 8);
        assert!(refused.readings[1].retry_after > Duration::ZERO);
        // The minute limit was not charged by the refusal: 8 remain for it alone.
        let alone = store.acquire_now(NOW, std::slice::from_ref(&minute));
        assert_eq!(alone.readings[0].remaining, 7);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let store = Arc::new(MemoryStore::new());
        let charge = key_charge(
            2,
            KeyLimit::RequestsPerMinute,
            Rule::Smooth { limit: 100 },
            1,
        );
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let store = Arc::clone(&store);
                    let charge = charge.clone();
                    scope.spawn(move || {
                        (0..50)
                            .filter(|_| {
                                store
                                    .acquire_now(NOW, std::slice::from_ref(&charge))
                                    .admitted
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
    }

    #[test]
    fn idle_counters_are_evicted_as_shards_grow() {
        let store = MemoryStore::new();
        for i in 0..20_000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            let charge = Charge {
                counter: CounterKey::Key {
                    digest: KeyDigest(digest),
                    limit: KeyLimit::RequestsPerMinute,
                },
                rule: Rule::Smooth { limit: 60 },
                cost: 1,
            };
            // Each counter drains within a second: by the next one's time it is idle.
            store.acquire_now(NOW + u64::from(i) * 1000, &[charge]);
        }
        assert!(store.len() < 2 * SHARDS * MIN_SWEEP, "{}", store.len());
        store.sweep(NOW + 30_000 * 1000);
        assert!(store.is_empty());
    }

    #[test]
    fn adjustments_release_slots_and_settle_tokens() {
        let store = MemoryStore::new();
        let slot = key_charge(
            3,
            KeyLimit::MaxConcurrentRequests,
            Rule::Concurrent { limit: 1 },
            1,
        );
        assert!(store.acquire_now(NOW, std::slice::from_ref(&slot)).admitted);
        assert!(!store.acquire_now(NOW, std::slice::from_ref(&slot)).admitted);
        store.adjust(
            NOW,
            &[Adjustment {
                counter: slot.counter.clone(),
                rule: slot.rule,
                delta: -1,
            }],
        );
        assert!(store.is_empty(), "a released slot leaves nothing behind");
        assert!(store.acquire_now(NOW, std::slice::from_ref(&slot)).admitted);
    }
}
