//! Counters behind rate limits and quotas: several limits checked and counted in one atomic
//! step (all or none), in this replica's memory or, with Redis, cluster-wide in one round trip
//! (one Lua script).
//!
//! - [`Limit::Rate`]: GCRA (the generic cell rate algorithm): `limit` per `period`, a burst of
//!   up to `limit` at once, then one every `period / limit`. One number per key, no window edge
//!   where twice the limit gets through.
//! - [`Limit::Quota`]: a counter over a calendar window (UTC minute, hour, day or month) that
//!   starts again at the window's end: request quotas, and token budgets where the cost is a
//!   reservation ([`LimitCounters::settle`] corrects it once the real count is known).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::connection::{Redis, RedisHealth};

/// One limit of an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// At most `limit` of cost per `period` (GCRA, burst `limit`).
    Rate {
        key: String,
        limit: u64,
        period: Duration,
        cost: u64,
    },
    /// At most `limit` of cost per calendar `window`.
    Quota {
        key: String,
        window: Window,
        limit: u64,
        cost: u64,
    },
}

/// A calendar window, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

/// What an admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every limit had room; each was counted. `at` is the clock reading that placed quota
    /// costs in their windows: pass it to [`LimitCounters::settle`].
    Admitted { at: SystemTime },
    /// `limits[index]` has no room (nothing was counted); it has room again after `retry_after`.
    Limited { index: usize, retry_after: Duration },
    /// The counters could not be reached: `admitted` is the configured failure mode (open:
    /// true, closed: false).
    Unchecked { admitted: bool },
}

pub trait LimitCounters: Send + Sync {
    /// Checks every limit and, when all have room, counts the cost against each: all or none.
    fn admit<'a>(&'a self, limits: &'a [Limit]) -> BoxFuture<'a, Verdict>;

    /// Adds `delta` (negative to give back) to the quota counter of `key` in the window that
    /// `at` fell in, if that window still counts: a token reservation settled with the real count.
    fn settle<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at: SystemTime,
        delta: i64,
    ) -> BoxFuture<'a, ()>;
}

impl Window {
    /// The window `at` falls in: its start and end, in seconds since the Unix epoch.
    pub fn bounds(self, at: SystemTime) -> (i64, i64) {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        let fixed = |length: i64| {
            let start = seconds - seconds.rem_euclid(length);
            (start, start + length)
        };
        match self {
            Self::Minute => fixed(60),
            Self::Hour => fixed(3600),
            Self::Day => fixed(86_400),
            Self::Month => month_bounds(seconds).unwrap_or_else(|| fixed(86_400)),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

fn month_bounds(seconds: i64) -> Option<(i64, i64)> {
    let date = time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .date();
    let first = time::Date::from_calendar_date(date.year(), date.month(), 1).ok()?;
    let next_year = match date.month() {
        time::Month::December => date.year() + 1,
        _ => date.year(),
    };
    let next = time::Date::from_calendar_date(next_year, date.month().next(), 1).ok()?;
    let start = first.midnight().assume_utc().unix_timestamp();
    let end = next.midnight().assume_utc().unix_timestamp();
    Some((start, end))
}

/// The counter key of a quota window: its key, its window kind and its start.
fn quota_key(key: &str, window: Window, start: i64) -> String {
    format!("llmux:quota:{}:{start}:{key}", window.as_str())
}

fn rate_key(key: &str) -> String {
    format!("llmux:rate:{key}")
}

fn unix_ms(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}

/// A limit as numbers: how a rate or a quota is checked and counted, wherever it is stored.
enum Plan {
    /// Emission interval and tolerance (both ms), cost.
    Rate {
        key: String,
        emission: f64,
        tolerance: f64,
        cost: u64,
    },
    /// Limit, window end (Unix ms), cost.
    Quota {
        key: String,
        limit: u64,
        end_ms: f64,
        cost: u64,
    },
}

fn plans(limits: &[Limit], at: SystemTime) -> Vec<Plan> {
    limits
        .iter()
        .map(|limit| match limit {
            Limit::Rate {
                key,
                limit,
                period,
                cost,
            } => {
                let period_ms = period.as_secs_f64() * 1000.0;
                Plan::Rate {
                    key: rate_key(key),
                    emission: period_ms / (*limit).max(1) as f64,
                    tolerance: period_ms,
                    cost: *cost,
                }
            }
            Limit::Quota {
                key,
                window,
                limit,
                cost,
            } => {
                let (start, end) = window.bounds(at);
                Plan::Quota {
                    key: quota_key(key, *window, start),
                    limit: *limit,
                    end_ms: end as f64 * 1000.0,
                    cost: *cost,
                }
            }
        })
        .collect()
}

/// One replica's counters.
#[derive(Debug, Default)]
pub struct MemoryLimits {
    /// Counter key -> (value, expiry in Unix ms): a rate's theoretical arrival time, a quota's
    /// count.
    counters: Mutex<HashMap<String, (f64, f64)>>,
}

/// Past this many counters, expired ones are dropped before adding another.
const MEMORY_COUNTERS_BEFORE_SWEEP: usize = 10_000;

impl MemoryLimits {
    /// The admission at `now` (exposed for tests that move the clock).
    pub fn admit_at(&self, limits: &[Limit], now: SystemTime) -> Verdict {
        let now_ms = unix_ms(now);
        let plans = plans(limits, now);
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let live = |counters: &HashMap<String, (f64, f64)>, key: &str| {
            counters
                .get(key)
                .filter(|(_, expires)| *expires > now_ms)
                .map(|(value, _)| *value)
        };
        let mut updates = Vec::with_capacity(plans.len());
        for (index, plan) in plans.iter().enumerate() {
            match plan {
                Plan::Rate {
                    key,
                    emission,
                    tolerance,
                    cost,
                } => {
                    let tat = live(&counters, key).unwrap_or(now_ms).max(now_ms);
                    let new_tat = tat + emission * *cost as f64;
                    if new_tat - now_ms > *tolerance {
                        return limited(index, new_tat - tolerance - now_ms);
                    }
                    updates.push((key.clone(), new_tat, new_tat));
                }
                Plan::Quota {
                    key,
                    limit,
                    end_ms,
                    cost,
                } => {
                    let used = live(&counters, key).unwrap_or(0.0);
                    if *cost > 0 && used + *cost as f64 > *limit as f64 {
                        return limited(index, end_ms - now_ms);
                    }
                    updates.push((key.clone(), used + *cost as f64, *end_ms));
                }
            }
        }
        if counters.len() > MEMORY_COUNTERS_BEFORE_SWEEP {
            counters.retain(|_, (_, expires)| *expires > now_ms);
        }
        for (key, value, expires) in updates {
            counters.insert(key, (value, expires));
        }
        Verdict::Admitted { at: now }
    }

    pub fn settle_now(&self, key: &str, window: Window, at: SystemTime, delta: i64) {
        let (start, _) = window.bounds(at);
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((used, _)) = counters.get_mut(&quota_key(key, window, start)) {
            *used = (*used + delta as f64).max(0.0);
        }
    }
}

fn limited(index: usize, retry_after_ms: f64) -> Verdict {
    Verdict::Limited {
        index,
        retry_after: Duration::from_secs_f64((retry_after_ms / 1000.0).max(0.001)),
    }
}

impl LimitCounters for MemoryLimits {
    fn admit<'a>(&'a self, limits: &'a [Limit]) -> BoxFuture<'a, Verdict> {
        Box::pin(std::future::ready(self.admit_at(limits, SystemTime::now())))
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at: SystemTime,
        delta: i64,
    ) -> BoxFuture<'a, ()> {
        self.settle_now(key, window, at, delta);
        Box::pin(std::future::ready(()))
    }
}

/// Cluster-wide counters: one Lua script per admission, timed by Redis's clock (replicas'
/// clocks only place quota windows).
pub struct RedisLimits {
    redis: Redis,
    fail_closed: bool,
    admit: redis::Script,
    settle: redis::Script,
}

/// KEYS: one counter per limit. ARGV: four per limit: kind (`r` rate, `q` quota), then for a
/// rate the emission interval and tolerance (ms), for a quota the limit and the window's end
/// (Unix ms), then the cost. Returns {0} when admitted (every counter updated), {i, ms} when
/// limit i (1-based) has room again in ms (nothing updated).
const ADMIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local updates = {}
for i = 1, #KEYS do
  local kind = ARGV[i * 4 - 3]
  local a = tonumber(ARGV[i * 4 - 2])
  local b = tonumber(ARGV[i * 4 - 1])
  local cost = tonumber(ARGV[i * 4])
  local stored = tonumber(redis.call('GET', KEYS[i]) or '')
  if kind == 'r' then
    local tat = stored or now
    if tat < now then tat = now end
    local new_tat = tat + a * cost
    if new_tat - now > b then return {i, math.ceil(new_tat - b - now)} end
    updates[i] = new_tat
  else
    local used = stored or 0
    if cost > 0 and used + cost > a then return {i, math.ceil(b - now)} end
    updates[i] = cost
  end
end
for i = 1, #KEYS do
  if ARGV[i * 4 - 3] == 'r' then
    local ttl = math.max(1, math.ceil(updates[i] - now))
    redis.call('SET', KEYS[i], string.format('%.3f', updates[i]), 'PX', ttl)
  else
    redis.call('INCRBY', KEYS[i], updates[i])
    redis.call('PEXPIREAT', KEYS[i], math.ceil(tonumber(ARGV[i * 4 - 1])))
  end
end
return {0}
";

/// KEYS: a quota counter. ARGV: delta. Applied only while the counter exists; never below 0.
const SETTLE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
return 1
";

impl RedisLimits {
    /// `fail_closed`: refuse (rather than admit) when Redis cannot be asked.
    pub fn new(redis: Redis, fail_closed: bool) -> Self {
        Self {
            redis,
            fail_closed,
            admit: redis::Script::new(ADMIT_SCRIPT),
            settle: redis::Script::new(SETTLE_SCRIPT),
        }
    }

    pub fn health(&self) -> &std::sync::Arc<RedisHealth> {
        self.redis.health()
    }
}

impl LimitCounters for RedisLimits {
    fn admit<'a>(&'a self, limits: &'a [Limit]) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if limits.is_empty() {
                return Verdict::Admitted {
                    at: SystemTime::now(),
                };
            }
            let at = SystemTime::now();
            let plans = plans(limits, at);
            let mut invocation = self.admit.prepare_invoke();
            for plan in &plans {
                match plan {
                    Plan::Rate {
                        key,
                        emission,
                        tolerance,
                        cost,
                    } => invocation
                        .key(key)
                        .arg("r")
                        .arg(*emission)
                        .arg(*tolerance)
                        .arg(*cost),
                    Plan::Quota {
                        key,
                        limit,
                        end_ms,
                        cost,
                    } => invocation
                        .key(key)
                        .arg("q")
                        .arg(*limit)
                        .arg(*end_ms)
                        .arg(*cost),
                };
            }
            let answer: Result<Vec<i64>, _> = self
                .redis
                .run("admit", |mut connection| async move {
                    invocation.invoke_async(&mut connection).await
                })
                .await;
            match answer.as_deref() {
                Ok([0]) => Verdict::Admitted { at },
                Ok([limit, retry_ms]) if *limit >= 1 => Verdict::Limited {
                    index: usize::try_from(*limit - 1).unwrap_or(0),
                    retry_after: Duration::from_millis(
                        u64::try_from(*retry_ms).unwrap_or(0).max(1),
                    ),
                },
                Ok(other) => {
                    tracing::warn!(answer = ?other, "the admission script answered something unexpected");
                    self.unchecked()
                }
                Err(_) => self.unchecked(),
            }
        })
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at: SystemTime,
        delta: i64,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if delta == 0 {
                return;
            }
            let (start, _) = window.bounds(at);
            let counter = quota_key(key, window, start);
            let settled: Result<i64, _> = self
                .redis
                .run("settle", |mut connection| async move {
                    self.settle
                        .key(&counter)
                        .arg(delta)
                        .invoke_async(&mut connection)
                        .await
                })
                .await;
            if let Err(error) = settled {
                tracing::debug!(error = %error, "a reservation was not settled");
            }
        })
    }
}

impl RedisLimits {
    fn unchecked(&self) -> Verdict {
        let admitted = !self.fail_closed;
        self.redis.health().count_unchecked(admitted);
        Verdict::Unchecked { admitted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UTC time written `YYYY-MM-DDTHH:MM:SSZ`.
    fn at(text: &str) -> SystemTime {
        let number = |range: std::ops::Range<usize>| text[range].parse::<u8>().unwrap();
        let year: i32 = text[0..4].parse().unwrap();
        let month = time::Month::try_from(number(5..7)).unwrap();
        let date = time::Date::from_calendar_date(year, month, number(8..10)).unwrap();
        let moment = date
            .with_hms(number(11..13), number(14..16), number(17..19))
            .unwrap()
            .assume_utc();
        UNIX_EPOCH + Duration::from_secs(u64::try_from(moment.unix_timestamp()).unwrap())
    }

    #[test]
    fn windows_are_utc_calendar_windows() {
        let check = |window: Window, now: &str, start: &str, end: &str| {
            let (s, e) = window.bounds(at(now));
            let seconds = |t: &str| at(t).duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            assert_eq!(
                (s, e),
                (seconds(start), seconds(end)),
                "{window:?} at {now}"
            );
        };
        check(
            Window::Minute,
            "2026-12-01T10:15:42Z",
            "2026-12-01T10:15:00Z",
            "2026-12-01T10:16:00Z",
        );
        check(
            Window::Hour,
            "2026-12-01T10:15:42Z",
            "2026-12-01T10:00:00Z",
            "2026-12-01T11:00:00Z",
        );
        check(
            Window::Day,
            "2026-12-01T10:15:42Z",
            "2026-12-01T00:00:00Z",
            "2026-12-02T00:00:00Z",
        );
        check(
            Window::Month,
            "2026-12-31T23:59:59Z",
            "2026-12-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        check(
            Window::Month,
            "2028-02-29T12:00:00Z",
            "2028-02-01T00:00:00Z",
            "2028-03-01T00:00:00Z",
        );
    }

    #[test]
    fn a_rate_admits_its_burst_then_one_per_interval() {
        let limits = MemoryLimits::default();
        let rate = [Limit::Rate {
            key: "k".into(),
            limit: 60,
            period: Duration::from_secs(60),
            cost: 1,
        }];
        let start = at("2026-12-01T10:00:00Z");
        let admitted = (0..100)
            .filter(|_| matches!(limits.admit_at(&rate, start), Verdict::Admitted { .. }))
            .count();
        assert_eq!(admitted, 60);
        match limits.admit_at(&rate, start) {
            Verdict::Limited {
                index: 0,
                retry_after,
            } => {
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            other => panic!("expected limited, got {other:?}"),
        }
        let later = start + Duration::from_secs(1);
        assert!(matches!(
            limits.admit_at(&rate, later),
            Verdict::Admitted { .. }
        ));
        assert!(matches!(
            limits.admit_at(&rate, later),
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn limits_are_counted_all_or_none_and_reservations_settle() {
        let limits = MemoryLimits::default();
        let now = at("2026-12-01T10:00:00Z");
        let both = |cost: u64| {
            vec![
                Limit::Rate {
                    key: "k".into(),
                    limit: 10,
                    period: Duration::from_secs(60),
                    cost: 1,
                },
                Limit::Quota {
                    key: "k".into(),
                    window: Window::Day,
                    limit: 100,
                    cost,
                },
            ]
        };
        assert!(matches!(
            limits.admit_at(&both(80), now),
            Verdict::Admitted { .. }
        ));
        // The quota refuses: the rate must not have counted this one.
        assert!(matches!(
            limits.admit_at(&both(30), now),
            Verdict::Limited { index: 1, .. }
        ));
        limits.settle_now("k", Window::Day, now, -70);
        for _ in 0..9 {
            assert!(matches!(
                limits.admit_at(&both(1), now),
                Verdict::Admitted { .. }
            ));
        }
        assert!(matches!(
            limits.admit_at(&both(1), now),
            Verdict::Limited { index: 0, .. }
        ));
        let tomorrow = now + Duration::from_secs(86_400);
        assert!(matches!(
            limits.admit_at(&both(100), tomorrow),
            Verdict::Admitted { .. }
        ));
    }
}
