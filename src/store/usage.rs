//! Usage counters: the request path adds to an in-memory map (no IO), a task on the store's
//! runtime writes the sums in one transaction per interval. Counters of a failed write are kept
//! for the next one, so a store outage loses nothing while the process lives.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;

use crate::store::records::WindowType;
use crate::store::{now, Context, Store, StoreError};

/// At most this many distinct (bucket, window) counters wait for a write; past it new buckets
/// are dropped with a warning (a store down for long must not grow memory without bound).
const MAX_PENDING: usize = 100_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: i64,
    pub tokens: i64,
}

/// A bucket's name is shared by its three windows' counters (and, for a key, with its entry).
type CounterKey = (Arc<str>, WindowType, i64);

#[derive(Debug, Default)]
pub(crate) struct PendingUsage {
    counters: Mutex<HashMap<CounterKey, Counts>>,
    /// Held by a batch write from taking the counters to its commit, and by a reader from
    /// reading the pending counters to reading the written ones: a batch written in between
    /// would otherwise be counted twice (pending, then stored).
    writing: tokio::sync::Mutex<()>,
}

impl PendingUsage {
    fn add(&self, key: CounterKey, counts: Counts) {
        let Ok(mut counters) = self.counters.lock() else {
            return;
        };
        if counters.len() >= MAX_PENDING && !counters.contains_key(&key) {
            tracing::warn!("usage counters waiting for the store are at their bound: dropping one");
            return;
        }
        let entry = counters.entry(key).or_default();
        entry.requests += counts.requests;
        entry.tokens += counts.tokens;
    }

    fn take(&self) -> HashMap<CounterKey, Counts> {
        self.counters
            .lock()
            .map(|mut counters| std::mem::take(&mut *counters))
            .unwrap_or_default()
    }

    fn get(&self, key: &CounterKey) -> Counts {
        self.counters
            .lock()
            .ok()
            .and_then(|counters| counters.get(key).copied())
            .unwrap_or_default()
    }
}

impl Store {
    /// Counts `counts` for `bucket` (`key:<id>`, an owner, ...) in the current minute, hour and
    /// day. No IO: written by the next batch.
    pub fn record_usage(&self, bucket: &str, counts: Counts) {
        self.record_usage_of(&Arc::from(bucket), counts);
    }

    /// [`Store::record_usage`] for a bucket name already shared (a key entry's): no copy of it
    /// per window.
    pub fn record_usage_of(&self, bucket: &Arc<str>, counts: Counts) {
        let at = now();
        for window in WindowType::ALL {
            self.inner
                .context
                .usage
                .add((Arc::clone(bucket), window, window.start_of(at)), counts);
        }
    }

    /// Writes the pending counters now (shutdown, tests).
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        self.run(|context| async move { write(&context).await })
            .await
    }

    /// `bucket`'s counts in the `window` holding `at`: written ones plus this replica's pending.
    pub async fn usage(
        &self,
        bucket: String,
        window: WindowType,
        at: i64,
    ) -> Result<Counts, StoreError> {
        let start = window.start_of(at);
        self.run(move |context| async move {
            let _writes_wait = context.usage.writing.lock().await;
            let pending = context
                .usage
                .get(&(Arc::from(bucket.as_str()), window, start));
            let row = sqlx::query(
                "SELECT requests, tokens FROM usage_counters \
                     WHERE bucket = $1 AND window_type = $2 AND window_start = $3",
            )
            .bind(bucket)
            .bind(window.as_str())
            .bind(start)
            .fetch_optional(&context.pool)
            .await?;
            let stored = match row {
                Some(row) => Counts {
                    requests: row.try_get("requests")?,
                    tokens: row.try_get("tokens")?,
                },
                None => Counts::default(),
            };
            Ok(Counts {
                requests: stored.requests + pending.requests,
                tokens: stored.tokens + pending.tokens,
            })
        })
        .await
    }
}

async fn write(context: &Context) -> Result<(), StoreError> {
    let _readers_wait = context.usage.writing.lock().await;
    let batch = context.usage.take();
    if batch.is_empty() {
        return Ok(());
    }
    let written = async {
        let mut transaction = context.pool.begin().await?;
        for ((bucket, window, start), counts) in &batch {
            sqlx::query(
                "INSERT INTO usage_counters (bucket, window_type, window_start, requests, tokens) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (bucket, window_type, window_start) DO UPDATE SET \
                 requests = usage_counters.requests + excluded.requests, \
                 tokens = usage_counters.tokens + excluded.tokens",
            )
            .bind(&**bucket)
            .bind(window.as_str())
            .bind(*start)
            .bind(counts.requests)
            .bind(counts.tokens)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await
    }
    .await;
    if let Err(error) = written {
        for (key, counts) in batch {
            context.usage.add(key, counts);
        }
        return Err(error.into());
    }
    Ok(())
}

/// Runs on the store's runtime until it shuts down.
pub(crate) async fn write_periodically(context: Context, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = write(&context).await {
            tracing::warn!(error = %error, "writing usage counters failed: keeping them for the next write");
        }
    }
}
