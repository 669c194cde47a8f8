//! State that several replicas share: which endpoint made an id, image data, and the counters
//! of access control's limits (rates, quotas, token budgets, concurrency). Each kind is one trait
//! with an in-memory implementation (one instance, the default) and a Redis one (`--redis-url`),
//! chosen once at start-up. The counters' trait is access control's own
//! (`access::store::CounterStore`; its memory implementation is `access::store::MemoryStore`).
//!
//! Redis trouble never hangs a request: every call has a deadline (`--redis-timeout`), and while
//! Redis is unreachable ids and images fall back to what this replica knows and limits fail open
//! (or closed with `--redis-fail-closed`); sharing resumes by itself when Redis is back.
pub mod connection;
pub mod image_data;
pub mod limits;
pub mod owners;

use std::sync::Arc;
use std::time::Duration;

use self::connection::Redis;
use self::image_data::{ImageStore, RedisImages};
use self::limits::{RedisCounters, DEFAULT_LEASE_TTL};
use self::owners::{IdOwners, MemoryOwners, RedisOwners};
use crate::access::store::{CounterStore, MemoryStore};
use crate::images::ImageCache;
use crate::routing::responses::{ResponseOwners, DEFAULT_CAPACITY, DEFAULT_TTL};

/// Every kind of shared state, built once at start-up.
pub struct SharedState {
    pub owners: Arc<dyn IdOwners>,
    pub images: Arc<dyn ImageStore>,
    /// Access control's limit counters.
    pub counters: Arc<dyn CounterStore>,
    /// The Redis behind them, when `--redis-url` is set.
    pub redis: Option<Redis>,
}

/// The settings the stores are built from.
#[derive(Debug, Clone, Copy)]
pub struct SharedSettings {
    /// Deadline of every Redis call.
    pub redis_timeout: Duration,
    /// Refuse (rather than admit) requests whose limits cannot be checked.
    pub fail_closed: bool,
    pub image_cache_bytes: u64,
    pub image_cache_ttl: Duration,
    /// How long a replica's concurrency slots count without renewal (a replica that died).
    pub lease_ttl: Duration,
}

impl SharedSettings {
    pub fn new(image_cache_bytes: u64, image_cache_ttl: Duration) -> Self {
        Self {
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            fail_closed: false,
            image_cache_bytes,
            image_cache_ttl,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// `--redis-timeout`'s default: far above a loopback or same-zone round trip (well under 1 ms),
/// far below what a client notices.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

impl SharedState {
    /// One instance: everything in this process's memory.
    pub fn in_memory(settings: SharedSettings) -> Self {
        Self {
            owners: Arc::new(MemoryOwners::default()),
            images: Arc::new(ImageCache::new(
                settings.image_cache_bytes,
                settings.image_cache_ttl,
            )),
            counters: Arc::new(MemoryStore::new()),
            redis: None,
        }
    }

    /// Several replicas: everything in the Redis at `url`. Connects lazily: llmux starts (and
    /// serves from memory) while Redis is down.
    pub fn on_redis(url: &str, settings: SharedSettings) -> Result<Self, redis::RedisError> {
        let redis = Redis::open(url, settings.redis_timeout)?;
        let local_images = ImageCache::new(settings.image_cache_bytes, settings.image_cache_ttl);
        Ok(Self {
            owners: Arc::new(RedisOwners::new(
                redis.clone(),
                MemoryOwners::new(ResponseOwners::new(DEFAULT_CAPACITY, DEFAULT_TTL)),
                DEFAULT_TTL,
            )),
            images: Arc::new(RedisImages::new(
                redis.clone(),
                local_images,
                settings.image_cache_bytes,
                settings.image_cache_ttl,
            )),
            counters: Arc::new(RedisCounters::new(
                redis.clone(),
                settings.fail_closed,
                settings.lease_ttl,
            )),
            redis: Some(redis),
        })
    }

    /// Redis when a URL is given, memory otherwise.
    pub fn build(
        redis_url: Option<&str>,
        settings: SharedSettings,
    ) -> Result<Self, redis::RedisError> {
        match redis_url {
            Some(url) => Self::on_redis(url, settings),
            None => Ok(Self::in_memory(settings)),
        }
    }
}
