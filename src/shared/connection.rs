//! The one Redis connection every shared store uses: a connection manager that reconnects by
//! itself, a deadline on every call, and a short back-off after a failure so that requests do not
//! each wait for a Redis that is down. Failures are counted, warned about at most every few
//! seconds, and exported as metrics.
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;

/// Once Redis is unreachable (a refused or dropped connection, or [`TIMEOUTS_BEFORE_BACK_OFF`]
/// timeouts in a row), calls are not even tried for this long (one call then probes): a Redis
/// that is down costs a request nothing but this replica's own answer.
pub const BACK_OFF_AFTER_FAILURE: Duration = Duration::from_millis(200);
/// Timeouts in a row that make Redis count as unreachable. One slow answer (a busy machine)
/// costs only its own call; a hung Redis costs this many calls the deadline, then none.
pub const TIMEOUTS_BEFORE_BACK_OFF: u32 = 3;
/// At most one warning about Redis failures per this interval; the next one says how many
/// calls failed meanwhile.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why a shared-state call did not reach Redis or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// A recent call failed: this one was not tried (see [`BACK_OFF_AFTER_FAILURE`]).
    #[error("redis is unreachable (not tried again yet)")]
    Unavailable,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis call failed")]
    Redis(#[source] redis::RedisError),
    #[error("redis answered something llmux did not write: {0}")]
    Corrupt(String),
}

/// A cheap handle (clone it freely) on the Redis every replica shares.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    deadline: Duration,
    health: Arc<RedisHealth>,
}

/// What `/health` says about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisState {
    Up,
    Down,
}

/// Reachability, failure counts and the warning rate limit, shared by every clone.
#[derive(Debug)]
pub struct RedisHealth {
    started: Instant,
    /// Milliseconds since `started` until which calls are skipped; 0 while Redis answers.
    down_until: AtomicU64,
    /// Set while one call probes a Redis believed down.
    probing: AtomicBool,
    /// False from the back-off on, until a call succeeds.
    up: AtomicBool,
    /// Timeouts since the last answer.
    timeouts_in_a_row: AtomicU32,
    /// Failures by (operation, kind), for `llmux_redis_errors_total`.
    errors: Mutex<Vec<(ErrorLabels, u64)>>,
    /// Admissions decided without Redis, failed open and failed closed.
    unchecked_open: AtomicU64,
    unchecked_closed: AtomicU64,
    /// Milliseconds since `started` of the last warning (0: none yet) and failures since.
    last_warning: AtomicU64,
    failed_since_warning: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

impl Redis {
    /// A handle on the Redis at `url` (`redis://host:port/db`). No IO happens here: the first
    /// call connects, so llmux starts while Redis is down and shares state once it is up.
    pub fn open(url: &str, deadline: Duration) -> Result<Self, redis::RedisError> {
        let info = url.into_connection_info()?;
        // Without TCP_NODELAY a small command waits for the previous one's ACK (Nagle against
        // delayed ACKs): 40 ms on Linux, measured by bench/redis.py.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadline.max(Duration::from_millis(100))))
            // One deadline, ours, around each whole call.
            .set_response_timeout(None)
            // Our own deadline and back-off decide when to try again; the manager's retries
            // would only make a caller wait for them.
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            deadline,
            health: Arc::new(RedisHealth::new()),
        })
    }

    /// Runs `call` on the shared connection within the deadline. `operation` names it in
    /// metrics and warnings.
    pub async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        call: F,
    ) -> Result<T, SharedStateError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(_probe) = self.health.may_call() else {
            self.health.count(operation, "skipped");
            return Err(SharedStateError::Unavailable);
        };
        match tokio::time::timeout(self.deadline, call(self.connection.clone())).await {
            Ok(Ok(value)) => {
                self.health.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                let connection = error.is_io_error()
                    || error.is_connection_refusal()
                    || error.is_connection_dropped()
                    || error.is_timeout()
                    || error.is_unrecoverable_error();
                match connection {
                    true => self.health.failed(operation, "unreachable", &error),
                    // Redis answered: it is up, the command was wrong (a bug, or a key llmux
                    // did not write).
                    false => {
                        self.health.count(operation, "error");
                        self.health.warn_at_most_every_interval(|failed| {
                            tracing::warn!(operation, error = %error, failed_calls = failed, "redis refused a command");
                        });
                    }
                }
                Err(SharedStateError::Redis(error))
            }
            Err(_) => {
                self.health.failed(
                    operation,
                    "timeout",
                    &format!("no answer within {:?}", self.deadline),
                );
                Err(SharedStateError::Timeout(self.deadline))
            }
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn health(&self) -> &Arc<RedisHealth> {
        &self.health
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("Redis")
            .field("deadline", &self.deadline)
            .field("state", &self.health.state())
            .finish_non_exhaustive()
    }
}

/// Clears `probing` when the probing call ends, however it ends.
struct Probe<'a>(Option<&'a AtomicBool>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Release);
        }
    }
}

impl RedisHealth {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            down_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            up: AtomicBool::new(true),
            timeouts_in_a_row: AtomicU32::new(0),
            errors: Mutex::new(Vec::new()),
            unchecked_open: AtomicU64::new(0),
            unchecked_closed: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            failed_since_warning: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> RedisState {
        match self.up.load(Ordering::Acquire) {
            true => RedisState::Up,
            false => RedisState::Down,
        }
    }

    /// Counts an admission decided without Redis.
    pub fn count_unchecked(&self, admitted: bool) {
        match admitted {
            true => self.unchecked_open.fetch_add(1, Ordering::Relaxed),
            false => self.unchecked_closed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Counts a write that was never sent (its queue was full).
    pub fn count_dropped(&self, operation: &'static str) {
        self.count(operation, "dropped");
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// `None` while backing off (and another call already probes); the guard clears the probe.
    fn may_call(&self) -> Option<Probe<'_>> {
        let down_until = self.down_until.load(Ordering::Acquire);
        if down_until == 0 {
            return Some(Probe(None));
        }
        if self.now_ms() < down_until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Probe(Some(&self.probing)))
    }

    fn succeeded(&self) {
        self.timeouts_in_a_row.store(0, Ordering::Release);
        if self.down_until.swap(0, Ordering::AcqRel) != 0 || !self.up.load(Ordering::Acquire) {
            self.up.store(true, Ordering::Release);
            let failed = self.failed_since_warning.swap(0, Ordering::AcqRel);
            tracing::info!(
                failed_calls = failed,
                "redis reachable again: sharing state resumes"
            );
        }
    }

    fn failed(&self, operation: &'static str, kind: &'static str, error: &dyn std::fmt::Display) {
        self.count(operation, kind);
        if kind == "timeout"
            && self.timeouts_in_a_row.fetch_add(1, Ordering::AcqRel) + 1 < TIMEOUTS_BEFORE_BACK_OFF
            && self.down_until.load(Ordering::Acquire) == 0
        {
            return;
        }
        self.up.store(false, Ordering::Release);
        let now = self.now_ms();
        let back_off = u64::try_from(BACK_OFF_AFTER_FAILURE.as_millis()).unwrap_or(u64::MAX);
        self.down_until.store(now + back_off, Ordering::Release);
        self.warn_at_most_every_interval(|failed| {
            tracing::warn!(
                operation,
                kind,
                error = %error,
                failed_calls = failed,
                "redis unreachable: limits fail open or closed as configured, ids and images fall back to this replica"
            );
        });
    }

    /// Counts a failed call and runs `warn` with the failures since the last warning, at most
    /// once per [`WARNING_INTERVAL`].
    fn warn_at_most_every_interval(&self, warn: impl FnOnce(u64)) {
        let now = self.now_ms();
        let failed = self.failed_since_warning.fetch_add(1, Ordering::AcqRel) + 1;
        let last = self.last_warning.load(Ordering::Acquire);
        let interval = u64::try_from(WARNING_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now.saturating_sub(last) >= interval;
        if due
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.failed_since_warning.store(0, Ordering::Release);
            warn(failed);
        }
    }

    fn count(&self, operation: &'static str, kind: &'static str) {
        let labels = ErrorLabels { operation, kind };
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match errors.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, count)) => *count += 1,
            None => errors.push((labels, 1)),
        }
    }
}

/// `llmux_redis_up`, `llmux_redis_errors_total`, `llmux_limits_unchecked_total`.
impl Collector for RedisHealthMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let health = &self.0;
        let up = ConstGauge::new(i64::from(health.state() == RedisState::Up));
        let metric = encoder.encode_descriptor(
            "llmux_redis_up",
            "1 while the last Redis call succeeded, 0 while Redis is unreachable",
            None,
            up.metric_type(),
        )?;
        up.encode(metric)?;
        let errors = health
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut metric = encoder.encode_descriptor(
            "llmux_redis_errors",
            "Redis calls that failed, by operation and kind (timeout, unreachable, error, skipped while backing off, dropped when the queue was full)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (labels, count) in &errors {
            ConstCounter::new(*count).encode(metric.encode_family(labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "llmux_limits_unchecked",
            "Admissions decided without Redis: failed open (admitted) or closed (refused)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (decision, count) in [
            ("open", &health.unchecked_open),
            ("closed", &health.unchecked_closed),
        ] {
            let labels = DecisionLabels { decision };
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The Redis metrics, registered with the application's registry.
#[derive(Debug)]
pub struct RedisHealthMetrics(pub Arc<RedisHealth>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}
