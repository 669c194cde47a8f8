//! Concurrency limits: at most N requests of a key in flight at once, each holding a lease until
//! it ends. In this replica's memory, or with Redis across replicas, where a lease expires by
//! itself unless its holder renews it, so a replica that dies mid-request frees its slots.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::connection::Redis;
use crate::images::new_id;

/// How long a Redis lease lives without renewal; its holder renews it every third of that.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

pub trait ConcurrencyLeases: Send + Sync {
    /// Takes one of the `limit` slots of `key`, held until the returned lease is dropped.
    fn acquire<'a>(&'a self, key: &'a str, limit: u32) -> BoxFuture<'a, LeaseVerdict>;
}

/// What an acquisition got.
#[derive(Debug)]
pub enum LeaseVerdict {
    Held(Lease),
    /// Every slot is taken.
    Full,
    /// The leases could not be reached: `admitted` is the configured failure mode.
    Unchecked {
        admitted: bool,
    },
}

/// A held slot; dropping it gives the slot back.
pub struct Lease {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// One replica's slots: a count per key.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    held: Arc<Mutex<HashMap<String, u32>>>,
}

fn lock(held: &Mutex<HashMap<String, u32>>) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryLeases {
    pub fn acquire_now(&self, key: &str, limit: u32) -> LeaseVerdict {
        let mut held = lock(&self.held);
        let count = held.entry(key.to_owned()).or_insert(0);
        if *count >= limit {
            return LeaseVerdict::Full;
        }
        *count += 1;
        let slots = Arc::clone(&self.held);
        let key = key.to_owned();
        LeaseVerdict::Held(Lease {
            release: Some(Box::new(move || {
                let mut held = lock(&slots);
                if let Some(count) = held.get_mut(&key) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        held.remove(&key);
                    }
                }
            })),
        })
    }
}

impl ConcurrencyLeases for MemoryLeases {
    fn acquire<'a>(&'a self, key: &'a str, limit: u32) -> BoxFuture<'a, LeaseVerdict> {
        Box::pin(std::future::ready(self.acquire_now(key, limit)))
    }
}

/// Leases in Redis: a sorted set per key, lease id -> expiry (Redis's clock). Expired leases are
/// dropped before counting.
pub struct RedisLeases {
    redis: Redis,
    fail_closed: bool,
    ttl: Duration,
    scripts: Arc<LeaseScripts>,
}

struct LeaseScripts {
    acquire: redis::Script,
    renew: redis::Script,
}

/// KEYS: the key's set. ARGV: limit, TTL ms, lease id. Returns 1 when taken, 0 when full.
const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: the key's set. ARGV: TTL ms, lease id. Extends a lease that is still there.
const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return renewed
";

impl RedisLeases {
    pub fn new(redis: Redis, fail_closed: bool, ttl: Duration) -> Self {
        Self {
            redis,
            fail_closed,
            ttl,
            scripts: Arc::new(LeaseScripts {
                acquire: redis::Script::new(ACQUIRE_SCRIPT),
                renew: redis::Script::new(RENEW_SCRIPT),
            }),
        }
    }

    fn unchecked(&self) -> LeaseVerdict {
        let admitted = !self.fail_closed;
        self.redis.health().count_unchecked(admitted);
        LeaseVerdict::Unchecked { admitted }
    }

    /// A lease that renews itself until dropped, then removes itself.
    fn held(&self, set: String, id: String) -> Lease {
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let renewal = {
            let (redis, scripts, set, id) = (
                self.redis.clone(),
                Arc::clone(&self.scripts),
                set.clone(),
                id.clone(),
            );
            let every = (self.ttl / 3).max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let (scripts, set, id) = (&scripts, &set, &id);
                    let renewed: Result<i64, _> = redis
                        .run("renew_lease", |mut connection| async move {
                            scripts
                                .renew
                                .key(set)
                                .arg(ttl_ms)
                                .arg(id)
                                .invoke_async(&mut connection)
                                .await
                        })
                        .await;
                    if let Err(error) = renewed {
                        tracing::debug!(error = %error, "a concurrency lease was not renewed");
                    }
                }
            })
        };
        let redis = self.redis.clone();
        Lease {
            release: Some(Box::new(move || {
                renewal.abort();
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // No runtime left (shutting down): the lease expires by itself.
                    return;
                };
                runtime.spawn(async move {
                    let released = redis
                        .run("release_lease", |mut connection| async move {
                            redis::cmd("ZREM")
                                .arg(&set)
                                .arg(&id)
                                .query_async::<()>(&mut connection)
                                .await
                        })
                        .await;
                    if let Err(error) = released {
                        tracing::debug!(error = %error, "a concurrency lease will expire instead of being released");
                    }
                });
            })),
        }
    }
}

impl ConcurrencyLeases for RedisLeases {
    fn acquire<'a>(&'a self, key: &'a str, limit: u32) -> BoxFuture<'a, LeaseVerdict> {
        Box::pin(async move {
            let set = format!("llmux:lease:{key}");
            let id = new_id();
            let ttl_ms = u64::try_from(self.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let (scripts, set_key, lease_id) = (&self.scripts, &set, &id);
            let taken: Result<i64, _> = self
                .redis
                .run("acquire_lease", |mut connection| async move {
                    scripts
                        .acquire
                        .key(set_key)
                        .arg(limit)
                        .arg(ttl_ms)
                        .arg(lease_id)
                        .invoke_async(&mut connection)
                        .await
                })
                .await;
            match taken {
                Ok(1) => LeaseVerdict::Held(self.held(set, id)),
                Ok(_) => LeaseVerdict::Full,
                Err(_) => self.unchecked(),
            }
        })
    }
}
