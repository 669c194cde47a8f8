//! Limit counters in Redis, shared by every replica: access control's
//! [`CounterStore`](crate::access::store::CounterStore) with the same decisions as its in-memory
//! `MemoryStore` (GCRA minute limits, UTC calendar windows, token reservations settled later,
//! concurrency), one round trip per admission.
//!
//! - `acquire` is ONE `EVALSHA` (redis-rs loads the script on `NOSCRIPT`) covering every charge
//!   of the admission: the script reads each counter, decides all or nothing, applies the charges
//!   when all fit and answers the states it read. The readings (rate-limit headers, retry-after)
//!   are then computed here by `access::limits::check` from those states, so they are the memory
//!   store's to the digit.
//! - `adjust` (settled tokens, refunds, released slots) is called from `Drop`: it only queues the
//!   adjustments on a bounded channel. One background task (on a thread of its own) sends them in
//!   order, batching what is queued into one script call.
//! - Minute limits and concurrency use Redis's clock (`TIME`); calendar windows are placed by the
//!   caller's `now_ms` (a key per window start, expiring after the window's end).
//! - Concurrency: each counter is a hash of in-flight counts per replica; a replica's liveness is
//!   a field of `llmux:limit:replicas` (expiry in Redis time) that it renews every third of
//!   `lease_ttl` while it holds slots. The script ignores (and deletes) the counts of replicas
//!   whose liveness expired, so a replica killed mid-request frees its slots within `lease_ttl`.
//!   This replica also keeps its own counts: after any failed or dropped write it writes them
//!   back whole with the next renewal, so Redis converges to what is really in flight.
//! - Redis unreachable (deadline `--redis-timeout`, then the connection's back-off): fail open by
//!   default (admitted, readings as if the counters were empty, counted in
//!   `llmux_limits_unchecked_total{decision="open"}`), or an error with `--redis-fail-closed`
//!   (access control answers 503).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use smallvec::SmallVec;
use tokio::sync::mpsc;

use super::connection::{Redis, RedisHealth};
use crate::access::limits::{self, CounterState, Measure, Reading, Rule};
use crate::access::store::{Acquired, Adjustment, Charge, CounterKey, CounterStore, StoreError};

/// How long a replica's concurrency slots count without it renewing them; it renews every
/// third of that while it holds any.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Adjustment batches queued for the background sender at most; past it they are dropped (and
/// concurrency counts rewritten whole at the next renewal).
pub const ADJUSTMENT_QUEUE: usize = 10_000;
/// Queued batches sent in one script call at most.
const BATCH: usize = 64;
/// The replicas' liveness hash.
const REPLICAS_KEY: &str = "llmux:limit:replicas";
/// A calendar counter lives this long past its window's end (clocks of replicas differ a little).
const CALENDAR_GRACE_MS: u64 = 60_000;

/// KEYS[1]: the replicas' liveness hash; KEYS[1 + i]: charge i's counter. ARGV[1]: this replica's
/// id; ARGV[2]: the lease TTL (ms); then four per charge: kind (`s` smooth, `c` calendar, `n`
/// concurrent), limit, cost, and for a calendar counter its expiry (Unix ms).
/// Answers {admitted (1 or 0), state of each counter before charging}: a smooth counter's level
/// drained to now, a calendar counter's use, the requests in flight on live replicas.
const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replica, ttl = ARGV[1], tonumber(ARGV[2])
local function in_flight(key)
  local fields = redis.call('HGETALL', key)
  local total = 0
  for j = 1, #fields, 2 do
    local until_ms = tonumber(redis.call('HGET', KEYS[1], fields[j]) or '0')
    if fields[j] == replica or until_ms > now then
      total = total + tonumber(fields[j + 1])
    else
      redis.call('HDEL', key, fields[j])
    end
  end
  return total
end
local n = #KEYS - 1
local states, admitted = {}, 1
for i = 1, n do
  local key, kind = KEYS[i + 1], ARGV[i * 4 - 1]
  local limit, cost = tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
  local state
  if kind == 's' then
    local stored = redis.call('HMGET', key, 'l', 't')
    local level, at = tonumber(stored[1]) or 0, tonumber(stored[2]) or now
    state = math.max(0, level - math.max(0, now - at) * limit / 60000)
  elseif kind == 'c' then
    state = tonumber(redis.call('GET', key) or '0') or 0
  else
    state = in_flight(key)
  end
  states[i] = state
  if state + cost > limit then admitted = 0 end
end
if admitted == 1 then
  for i = 1, n do
    local key, kind = KEYS[i + 1], ARGV[i * 4 - 1]
    local limit, cost = tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
    if kind == 's' then
      local level = states[i] + cost
      redis.call('HSET', key, 'l', string.format('%.17g', level), 't', now)
      redis.call('PEXPIRE', key, math.ceil(level * 60000 / limit) + 1000)
    elseif kind == 'c' then
      redis.call('INCRBY', key, cost)
      redis.call('PEXPIREAT', key, ARGV[i * 4 + 2])
    else
      redis.call('HINCRBY', key, replica, cost)
      redis.call('PEXPIRE', key, ttl)
      redis.call('HSET', KEYS[1], replica, now + ttl)
    end
  end
end
local answer = {tostring(admitted)}
for i = 1, n do answer[i + 1] = string.format('%.17g', states[i]) end
return answer
";

/// KEYS and ARGV as for the acquire script, with a signed delta in place of the cost. Applies
/// every adjustment; never below empty.
const ADJUST_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replica = ARGV[1]
for i = 1, #KEYS - 1 do
  local key, kind = KEYS[i + 1], ARGV[i * 4 - 1]
  local limit, delta = tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
  if kind == 's' then
    local stored = redis.call('HMGET', key, 'l', 't')
    local level, at = tonumber(stored[1]) or 0, tonumber(stored[2]) or now
    level = math.max(0, math.max(0, level - math.max(0, now - at) * limit / 60000) + delta)
    if level > 0 then
      redis.call('HSET', key, 'l', string.format('%.17g', level), 't', now)
      redis.call('PEXPIRE', key, math.ceil(level * 60000 / limit) + 1000)
    else
      redis.call('DEL', key)
    end
  elseif kind == 'c' then
    local used = math.max(0, (tonumber(redis.call('GET', key) or '0') or 0) + delta)
    redis.call('SET', key, used, 'PXAT', ARGV[i * 4 + 2])
  else
    if redis.call('HINCRBY', key, replica, delta) <= 0 then redis.call('HDEL', key, replica) end
  end
end
return 1
";

/// KEYS[1]: the replicas' liveness hash; KEYS[1 + i]: a concurrency counter this replica holds
/// slots of. ARGV[1]: replica id; ARGV[2]: TTL (ms); ARGV[2 + i]: this replica's count in counter
/// i, or `-` to leave it as it is. Renews this replica's liveness and drops expired replicas.
const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local replica, ttl = ARGV[1], tonumber(ARGV[2])
local fields = redis.call('HGETALL', KEYS[1])
for j = 1, #fields, 2 do
  if tonumber(fields[j + 1]) <= now then redis.call('HDEL', KEYS[1], fields[j]) end
end
redis.call('HSET', KEYS[1], replica, now + ttl)
for i = 2, #KEYS do
  local count = ARGV[i + 1]
  if count ~= '-' then
    if tonumber(count) > 0 then
      redis.call('HSET', KEYS[i], replica, count)
    else
      redis.call('HDEL', KEYS[i], replica)
    end
  end
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
";

/// The counters of every replica, in Redis.
pub struct RedisCounters {
    redis: Redis,
    fail_closed: bool,
    acquire: redis::Script,
    local: Arc<Local>,
    /// Adjustments with the time they were made at (it places calendar windows).
    adjustments: mpsc::Sender<(u64, Vec<Adjustment>)>,
}

/// What this replica knows by itself: its id, the slots it holds, and whether Redis may have
/// missed a change to them.
struct Local {
    replica: String,
    ttl_ms: u64,
    /// Concurrency counter (Redis key) -> (its limit, slots this replica holds in it).
    slots: Mutex<HashMap<String, (u64, u64)>>,
    /// A write of slot counts failed or was dropped: write them whole at the next renewal.
    dirty: AtomicBool,
}

impl RedisCounters {
    /// `fail_closed`: refuse (rather than admit) when Redis cannot be asked. `lease_ttl`: how long
    /// this replica's concurrency slots count if it stops renewing them (it died).
    pub fn new(redis: Redis, fail_closed: bool, lease_ttl: Duration) -> Self {
        let local = Arc::new(Local {
            replica: crate::images::new_id(),
            ttl_ms: u64::try_from(lease_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            slots: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        });
        let (sender, receiver) = mpsc::channel(ADJUSTMENT_QUEUE);
        spawn_background(redis.clone(), Arc::clone(&local), receiver, lease_ttl);
        Self {
            redis,
            fail_closed,
            acquire: redis::Script::new(ACQUIRE_SCRIPT),
            local,
            adjustments: sender,
        }
    }

    pub fn health(&self) -> &Arc<RedisHealth> {
        self.redis.health()
    }

    /// Redis could not be asked: the configured failure mode.
    fn unchecked(&self, now_ms: u64, charges: &[Charge]) -> Result<Acquired, StoreError> {
        let admitted = !self.fail_closed;
        self.redis.health().count_unchecked(admitted);
        if !admitted {
            return Err(StoreError("redis is unreachable".into()));
        }
        self.local.dirty.store(true, Ordering::Release);
        self.local.hold(charges, now_ms);
        Ok(Acquired {
            admitted: true,
            readings: charges
                .iter()
                .map(|charge| limits::check(charge.rule, None, charge.cost, now_ms).0)
                .collect(),
        })
    }
}

impl CounterStore for RedisCounters {
    fn acquire<'a>(
        &'a self,
        now_ms: u64,
        charges: &'a [Charge],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        Box::pin(async move {
            if charges.is_empty() {
                return Ok(Acquired {
                    admitted: true,
                    readings: SmallVec::new(),
                });
            }
            let mut call = ScriptCall::new(&self.local);
            for charge in charges {
                call.push(Change::from(charge), now_ms);
            }
            let mut invocation = self.acquire.prepare_invoke();
            call.add_to(&mut invocation);
            let answer: Result<Vec<String>, _> = self
                .redis
                .run("acquire_limits", |mut connection| async move {
                    invocation.invoke_async(&mut connection).await
                })
                .await;
            let parsed = match answer {
                Ok(answer) => parse_answer(&answer, charges.len()),
                Err(_) => return self.unchecked(now_ms, charges),
            };
            match parsed {
                Some((admitted, states)) => {
                    if admitted {
                        self.local.hold(charges, now_ms);
                    }
                    Ok(readings(charges, &states, admitted, now_ms))
                }
                None => {
                    tracing::warn!(
                        "the limit script answered something llmux did not expect (another program's keys?)"
                    );
                    self.unchecked(now_ms, charges)
                }
            }
        })
    }

    fn adjust(&self, now_ms: u64, adjustments: &[Adjustment]) {
        if adjustments.is_empty() {
            return;
        }
        // This replica's own slot counts follow the adjustments as the sender sends them, so
        // that a whole rewrite of them never counts a release still queued.
        if let Err(error) = self.adjustments.try_send((now_ms, adjustments.to_vec())) {
            let (now_ms, adjustments) = error.into_inner();
            self.local.release(&adjustments, now_ms);
            self.local.dirty.store(true, Ordering::Release);
            self.redis.health().count_dropped("adjust_limits");
        }
    }
}

/// One counter change as the scripts take it.
struct Change<'a> {
    counter: &'a CounterKey,
    rule: Rule,
    amount: i64,
}

impl<'a> From<&'a Charge> for Change<'a> {
    fn from(charge: &'a Charge) -> Self {
        Self {
            counter: &charge.counter,
            rule: charge.rule,
            amount: i64::try_from(charge.cost).unwrap_or(i64::MAX),
        }
    }
}

impl<'a> From<&'a Adjustment> for Change<'a> {
    fn from(adjustment: &'a Adjustment) -> Self {
        Self {
            counter: &adjustment.counter,
            rule: adjustment.rule,
            amount: adjustment.delta,
        }
    }
}

/// A script's KEYS and ARGV, built from changes (pure: unit-tested below).
#[derive(Debug, PartialEq)]
struct ScriptCall {
    keys: Vec<String>,
    args: Vec<String>,
}

impl ScriptCall {
    fn new(local: &Local) -> Self {
        Self {
            keys: vec![REPLICAS_KEY.to_owned()],
            args: vec![local.replica.clone(), local.ttl_ms.to_string()],
        }
    }

    /// Adds a change made at `now_ms` (which places a calendar change in its window).
    fn push(&mut self, change: Change<'_>, now_ms: u64) {
        let (kind, expiry) = match change.rule {
            Rule::Smooth { .. } => ("s", 0),
            Rule::Calendar { window, .. } => {
                let (_, end) = window.calendar_bounds(now_ms);
                ("c", end.saturating_add(CALENDAR_GRACE_MS))
            }
            Rule::Concurrent { .. } => ("n", 0),
        };
        self.keys
            .push(redis_key(change.counter, change.rule, now_ms));
        self.args.extend([
            kind.to_owned(),
            change.rule.limit().max(1).to_string(),
            change.amount.to_string(),
            expiry.to_string(),
        ]);
    }

    fn add_to(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in &self.args {
            invocation.arg(arg);
        }
    }
}

/// The Redis key of a counter. Key limits are named by the key's digest (hex) and limit, quota
/// counters by their measure, owner (length-prefixed, so no owner name can collide with
/// another's) and rule; a calendar counter adds its window's start, so a new window starts
/// empty and the old one expires by itself.
fn redis_key(counter: &CounterKey, rule: Rule, now_ms: u64) -> String {
    let mut key = match counter {
        CounterKey::Key { digest, limit } => {
            format!("llmux:limit:key:{}:{}", digest.to_hex(), limit.name())
        }
        CounterKey::Quota {
            rule,
            measure,
            owner,
        } => {
            let measure = match measure {
                Measure::Requests => "requests",
                Measure::Tokens => "tokens",
                Measure::Concurrent => "concurrent",
            };
            let owner = match owner {
                Some(owner) => format!("{}:{owner}", owner.len()),
                None => "-".to_owned(),
            };
            format!("llmux:limit:quota:{measure}:{owner}:{rule}")
        }
    };
    match rule {
        Rule::Smooth { .. } => key.push_str(":gcra"),
        Rule::Calendar { window, .. } => {
            let (start, _) = window.calendar_bounds(now_ms);
            key.push_str(&format!(":{}:{start}", window.name()));
        }
        Rule::Concurrent { .. } => key.push_str(":inflight"),
    }
    key
}

/// `{admitted, state...}` as the acquire script answers it; `None` when it is not that.
fn parse_answer(answer: &[String], charges: usize) -> Option<(bool, SmallVec<[f64; 8]>)> {
    let (admitted, states) = answer.split_first()?;
    if states.len() != charges {
        return None;
    }
    let admitted = match admitted.as_str() {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let states = states
        .iter()
        .map(|state| {
            state
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
        })
        .collect::<Option<_>>()?;
    Some((admitted, states))
}

/// The readings of an admission from the states the script read, computed exactly as the memory
/// store computes them (`limits::check` on the same states).
fn readings(charges: &[Charge], states: &[f64], admitted: bool, now_ms: u64) -> Acquired {
    let readings = charges
        .iter()
        .zip(states)
        .map(|(charge, &state)| {
            let state = match charge.rule {
                Rule::Smooth { .. } => CounterState::Smooth {
                    level: state,
                    at_ms: now_ms,
                },
                Rule::Calendar { window, .. } => CounterState::Calendar {
                    window_start_ms: window.calendar_bounds(now_ms).0,
                    used: state as u64,
                },
                Rule::Concurrent { .. } => CounterState::Concurrent {
                    in_flight: state as u64,
                },
            };
            let reading: Reading = limits::check(charge.rule, Some(state), charge.cost, now_ms).0;
            match admitted || !reading.retry_after.is_zero() {
                true => reading,
                // Nothing is charged: a limit that would have fit shows what it has now.
                false => limits::check(charge.rule, Some(state), 0, now_ms).0,
            }
        })
        .collect();
    Acquired { admitted, readings }
}

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the concurrency slots an admitted request holds.
    fn hold(&self, charges: &[Charge], now_ms: u64) {
        let mut slots = None;
        for charge in charges {
            if let Rule::Concurrent { limit } = charge.rule {
                let slots = slots.get_or_insert_with(|| self.lock());
                let held = slots
                    .entry(redis_key(&charge.counter, charge.rule, now_ms))
                    .or_insert((limit, 0));
                held.1 = held.1.saturating_add(charge.cost);
            }
        }
    }

    /// Counts the concurrency slots given back.
    fn release(&self, adjustments: &[Adjustment], now_ms: u64) {
        let mut slots = None;
        for adjustment in adjustments {
            if let Rule::Concurrent { .. } = adjustment.rule {
                let slots = slots.get_or_insert_with(|| self.lock());
                let key = redis_key(&adjustment.counter, adjustment.rule, now_ms);
                if let Some(held) = slots.get_mut(&key) {
                    held.1 = held.1.saturating_add_signed(adjustment.delta);
                }
            }
        }
    }

    /// The renewal's call: every counter this replica holds slots of, with its counts when
    /// Redis may have missed a change (`whole`); `None` when it holds none.
    fn renewal(&self, whole: bool) -> Option<ScriptCall> {
        let slots = self.lock();
        if slots.is_empty() {
            return None;
        }
        let mut call = ScriptCall::new(self);
        for (key, (_, held)) in slots.iter() {
            if *held == 0 && !whole {
                continue;
            }
            call.keys.push(key.clone());
            call.args.push(match whole {
                true => held.to_string(),
                false => "-".to_owned(),
            });
        }
        Some(call)
    }

    /// After a renewal went out: counters back at zero are forgotten, unless a write failed
    /// meanwhile (the next whole renewal must clear them in Redis).
    fn forget_released(&self) {
        if !self.dirty.load(Ordering::Acquire) {
            self.lock().retain(|_, (_, held)| *held > 0);
        }
    }
}

/// The background sender: queued adjustments in order, and the renewal of this replica's
/// liveness while it holds slots. On a thread with a runtime of its own, so that it outlives no
/// store (it ends when the store's sender is dropped) and depends on no worker.
fn spawn_background(
    redis: Redis,
    local: Arc<Local>,
    mut receiver: mpsc::Receiver<(u64, Vec<Adjustment>)>,
    lease_ttl: Duration,
) {
    let every = (lease_ttl / 3).max(Duration::from_millis(10));
    let run = move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::error!(
                "no runtime for the limit counters' background sender: adjustments stay unsent"
            );
            return;
        };
        runtime.block_on(async move {
            let adjust = redis::Script::new(ADJUST_SCRIPT);
            let renew = redis::Script::new(RENEW_SCRIPT);
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    first = receiver.recv() => {
                        let Some(first) = first else { return };
                        let mut batch = vec![first];
                        while batch.len() < BATCH {
                            match receiver.try_recv() {
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        send_adjustments(&redis, &local, &adjust, &batch).await;
                    }
                    _ = ticks.tick() => renew_slots(&redis, &local, &renew).await,
                }
            }
        });
    };
    if let Err(error) = std::thread::Builder::new()
        .name("llmux-limits".into())
        .spawn(run)
    {
        tracing::error!(%error, "cannot start the limit counters' background sender");
    }
}

/// Sends queued adjustments, in the order they were made, in one script call.
async fn send_adjustments(
    redis: &Redis,
    local: &Local,
    script: &redis::Script,
    batch: &[(u64, Vec<Adjustment>)],
) {
    let mut call = ScriptCall::new(local);
    for (now_ms, adjustments) in batch {
        local.release(adjustments, *now_ms);
        for adjustment in adjustments {
            call.push(Change::from(adjustment), *now_ms);
        }
    }
    let mut invocation = script.prepare_invoke();
    call.add_to(&mut invocation);
    let sent: Result<i64, _> = redis
        .run("adjust_limits", |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await;
    if sent.is_err() {
        local.dirty.store(true, Ordering::Release);
    }
}

async fn renew_slots(redis: &Redis, local: &Local, script: &redis::Script) {
    let whole = local.dirty.swap(false, Ordering::AcqRel);
    let Some(call) = local.renewal(whole) else {
        return;
    };
    let mut invocation = script.prepare_invoke();
    call.add_to(&mut invocation);
    let renewed: Result<i64, _> = redis
        .run("renew_slots", |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await;
    match renewed {
        Ok(_) => local.forget_released(),
        Err(_) => local.dirty.store(true, Ordering::Release),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::access::key::KeyDigest;
    use crate::access::limits::Window;
    use crate::access::store::{KeyLimit, MemoryStore};

    /// 2026-12-01T10:00:00Z.
    const NOW: u64 = 1_796_119_200_000;
    const HOUR_MS: u64 = 3_600_000;

    fn local() -> Local {
        Local {
            replica: "r1".into(),
            ttl_ms: 30_000,
            slots: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        }
    }

    fn key(limit: KeyLimit) -> CounterKey {
        CounterKey::Key {
            digest: KeyDigest([0xab; 32]),
            limit,
        }
    }

    fn charge(counter: CounterKey, rule: Rule, cost: u64) -> Charge {
        Charge {
            counter,
            rule,
            cost,
        }
    }

    #[test]
    fn the_script_gets_one_key_and_four_arguments_per_charge() {
        let charges = [
            charge(
                key(KeyLimit::MaxConcurrentRequests),
                Rule::Concurrent { limit: 2 },
                1,
            ),
            charge(
                key(KeyLimit::RequestsPerMinute),
                Rule::Smooth { limit: 60 },
                1,
            ),
            charge(
                key(KeyLimit::TokensPerDay),
                Rule::windowed(1000, Window::Day),
                300,
            ),
        ];
        let mut call = ScriptCall::new(&local());
        for charge in &charges {
            call.push(Change::from(charge), NOW);
        }
        let digest = "ab".repeat(32);
        let day_start = NOW - 10 * HOUR_MS;
        let day_end = day_start + 24 * HOUR_MS;
        assert_eq!(
            call,
            ScriptCall {
                keys: vec![
                    REPLICAS_KEY.into(),
                    format!("llmux:limit:key:{digest}:max_concurrent_requests:inflight"),
                    format!("llmux:limit:key:{digest}:requests_per_minute:gcra"),
                    format!("llmux:limit:key:{digest}:tokens_per_day:day:{day_start}"),
                ],
                args: ["r1", "30000", "n", "2", "1", "0", "s", "60", "1", "0", "c", "1000", "300",]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([(day_end + CALENDAR_GRACE_MS).to_string()])
                    .collect(),
            }
        );
    }

    #[test]
    fn an_adjustment_carries_its_signed_delta_in_the_window_it_was_made_in() {
        let adjustment = Adjustment {
            counter: key(KeyLimit::RequestsPerHour),
            rule: Rule::windowed(10, Window::Hour),
            delta: -1,
        };
        let mut call = ScriptCall::new(&local());
        call.push(Change::from(&adjustment), NOW + HOUR_MS + 5);
        assert!(call.keys[1].ends_with(&format!(":hour:{}", NOW + HOUR_MS)));
        assert_eq!(&call.args[2..5], ["c", "10", "-1"]);
    }

    #[test]
    fn quota_counters_cannot_collide_whatever_their_owner_is_called() {
        let quota = |owner: Option<&str>, rule: &str| CounterKey::Quota {
            rule: rule.into(),
            measure: Measure::Requests,
            owner: owner.map(Into::into),
        };
        let smooth = Rule::Smooth { limit: 1 };
        let a = redis_key(&quota(Some("a:b"), "c"), smooth, NOW);
        let b = redis_key(&quota(Some("a"), "b:c"), smooth, NOW);
        let global = redis_key(&quota(None, "c"), smooth, NOW);
        assert_eq!(a, "llmux:limit:quota:requests:3:a:b:c:gcra");
        assert_ne!(a, b);
        assert_eq!(global, "llmux:limit:quota:requests:-:c:gcra");
    }

    #[test]
    fn answers_are_parsed_or_refused_whole() {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let parsed = parse_answer(&strings(&["1", "0", "12.5"]), 2).unwrap();
        assert!(parsed.0);
        assert_eq!(parsed.1.as_slice(), [0.0, 12.5]);
        assert!(!parse_answer(&strings(&["0", "3"]), 1).unwrap().0);
        for bad in [
            &["1"][..],
            &["1", "2", "3"],
            &["2", "1"],
            &["1", "x"],
            &["1", "-1"],
            &["1", "inf"],
            &[],
        ] {
            assert!(parse_answer(&strings(bad), 1).is_none(), "{bad:?}");
        }
    }

    /// The readings from the script's states are the memory store's, admitted or not.
    #[test]
    fn readings_from_the_scripts_states_match_the_memory_stores() {
        let memory = MemoryStore::new();
        let minute = charge(
            key(KeyLimit::RequestsPerMinute),
            Rule::Smooth { limit: 60 },
            1,
        );
        let tokens = |cost| {
            charge(
                key(KeyLimit::TokensPerDay),
                Rule::windowed(100, Window::Day),
                cost,
            )
        };
        let slots = charge(
            key(KeyLimit::MaxConcurrentRequests),
            Rule::Concurrent { limit: 3 },
            1,
        );
        // States as the script would read them before each admission.
        let mut level = 0.0;
        let mut used = 0;
        let mut in_flight = 0;
        for (round, cost) in [40, 40, 30, 10, 15].into_iter().enumerate() {
            let charges = [minute.clone(), tokens(cost), slots.clone()];
            let expected = memory.acquire_now(NOW, &charges);
            let states = [level, used as f64, in_flight as f64];
            let admitted = level + 1.0 <= 60.0 && used + cost <= 100 && in_flight < 3;
            let got = readings(&charges, &states, admitted, NOW);
            assert_eq!(got, expected, "round {round}");
            if admitted {
                level += 1.0;
                used += cost;
                in_flight += 1;
            }
        }
        assert_eq!(in_flight, 3);
        let refused = readings(&[minute, tokens(1), slots], &[3.0, 100.0, 3.0], false, NOW);
        assert_eq!(refused.readings[0].remaining, 57);
        assert_eq!(refused.readings[2].retry_after, Duration::from_secs(1));
    }

    #[test]
    fn this_replica_counts_its_slots_and_rewrites_them_whole_only_after_a_failure() {
        let local = local();
        let slot = charge(
            key(KeyLimit::MaxConcurrentRequests),
            Rule::Concurrent { limit: 2 },
            1,
        );
        let minute = charge(
            key(KeyLimit::RequestsPerMinute),
            Rule::Smooth { limit: 60 },
            1,
        );
        assert!(local.renewal(false).is_none(), "nothing held: no renewal");
        local.hold(&[slot.clone(), minute], NOW);
        local.hold(std::slice::from_ref(&slot), NOW);
        let renewal = local.renewal(false).unwrap();
        assert_eq!(renewal.keys.len(), 2, "only concurrency counters");
        assert_eq!(renewal.args[2], "-");
        assert_eq!(local.renewal(true).unwrap().args[2], "2");
        let release = Adjustment {
            counter: slot.counter.clone(),
            rule: slot.rule,
            delta: -1,
        };
        local.release(&[release.clone(), release], NOW);
        assert_eq!(local.renewal(true).unwrap().args[2], "0");
        local.dirty.store(true, Ordering::Release);
        local.forget_released();
        assert!(local.renewal(false).is_some(), "kept while a write failed");
        local.dirty.store(false, Ordering::Release);
        local.forget_released();
        assert!(local.renewal(false).is_none());
    }
}
