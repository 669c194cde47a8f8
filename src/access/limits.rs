//! The arithmetic of one limit: smooth minute limits (GCRA), calendar windows (hour, day, month
//! in UTC) and concurrency. Pure functions of a counter's state and the time: the stores
//! (`access::store`) keep the states and apply several limits at once.
//!
//! Minute limits are a GCRA in its "virtual meter" form: the state is how full the meter is
//! (`level`, in requests or tokens) and when it was last looked at; it drains at `limit` per
//! minute. A request of cost `n` fits when the drained level plus `n` is at most `limit`. That is
//! the same decision as the textbook GCRA's theoretical arrival time (TAT = at + level × T/limit)
//! but stays exact for any limit (no rounded emission interval), and a refund is a subtraction.
//!
//! Hand-written rather than the `governor` crate because llmux needs, per request, several
//! limits with different rates checked all-or-nothing, refunds when real token usage is known,
//! and an algorithm a Redis script can run in one round trip for replicas; governor offers one
//! quota per limiter, no refund and in-process state only.
use std::time::Duration;

use time::OffsetDateTime;

pub const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// The window of a limit. Minute limits are smooth; the others are calendar windows in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The calendar window holding `now_ms` (ms since the Unix epoch, UTC): `[start, end)`.
    pub fn calendar_bounds(self, now_ms: u64) -> (u64, u64) {
        let fixed = |length: u64| {
            let start = now_ms - now_ms % length;
            (start, start + length)
        };
        match self {
            Self::Minute => fixed(MINUTE_MS),
            Self::Hour => fixed(HOUR_MS),
            Self::Day => fixed(DAY_MS),
            Self::Month => month_bounds(now_ms),
        }
    }
}

/// What a counter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Requests,
    Tokens,
    Concurrent,
}

/// How one counter is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `limit` per minute, smooth (GCRA).
    Smooth { limit: u64 },
    /// `limit` per calendar window (hour, day or month, UTC).
    Calendar { limit: u64, window: Window },
    /// At most `limit` at once; the admission's lease gives the slot back.
    Concurrent { limit: u64 },
}

impl Rule {
    /// Minute windows are smooth, the others calendar windows.
    pub fn windowed(limit: u64, window: Window) -> Self {
        match window {
            Window::Minute => Self::Smooth { limit },
            window => Self::Calendar { limit, window },
        }
    }

    pub fn limit(self) -> u64 {
        match self {
            Self::Smooth { limit } | Self::Calendar { limit, .. } | Self::Concurrent { limit } => {
                limit
            }
        }
    }
}

/// A counter's state. A state of another kind than its rule (the limit's window was edited)
/// counts as empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterState {
    Smooth { level: f64, at_ms: u64 },
    Calendar { window_start_ms: u64, used: u64 },
    Concurrent { in_flight: u64 },
}

/// What a limit has left, as the rate-limit headers and the decision trace show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again (smooth), or the window ends (calendar).
    pub reset: Duration,
    /// Zero when the charge fits; otherwise how long until it would.
    pub retry_after: Duration,
}

/// Checks `cost` against `state` at `now_ms`. Returns the reading and, when it fits, the state
/// after charging it (the caller stores it only if every limit of the request fits).
pub fn check(
    rule: Rule,
    state: Option<CounterState>,
    cost: u64,
    now_ms: u64,
) -> (Reading, Option<CounterState>) {
    match rule {
        Rule::Smooth { limit } => {
            let level = smooth_level(limit, state, now_ms);
            let wanted = level + cost as f64;
            let limit_f = limit as f64;
            let ms_per_unit = MINUTE_MS as f64 / limit_f;
            if wanted <= limit_f {
                let reading = Reading {
                    limit,
                    remaining: (limit_f - wanted).floor() as u64,
                    reset: ms((wanted * ms_per_unit).ceil()),
                    retry_after: Duration::ZERO,
                };
                let after = CounterState::Smooth {
                    level: wanted,
                    at_ms: now_ms,
                };
                (reading, Some(after))
            } else {
                let reading = Reading {
                    limit,
                    remaining: (limit_f - level).max(0.0).floor() as u64,
                    reset: ms((level * ms_per_unit).ceil()),
                    // Whole seconds at least: Retry-After has a resolution of one second.
                    retry_after: ms(((wanted - limit_f) * ms_per_unit).ceil()),
                };
                (reading, None)
            }
        }
        Rule::Calendar { limit, window } => {
            let (start, end) = window.calendar_bounds(now_ms);
            let used = match state {
                Some(CounterState::Calendar {
                    window_start_ms,
                    used,
                }) if window_start_ms == start => used,
                _ => 0,
            };
            let reset = Duration::from_millis(end - now_ms);
            match used.checked_add(cost).filter(|&total| total <= limit) {
                Some(total) => (
                    Reading {
                        limit,
                        remaining: limit - total,
                        reset,
                        retry_after: Duration::ZERO,
                    },
                    Some(CounterState::Calendar {
                        window_start_ms: start,
                        used: total,
                    }),
                ),
                None => (
                    Reading {
                        limit,
                        remaining: limit.saturating_sub(used),
                        reset,
                        retry_after: reset,
                    },
                    None,
                ),
            }
        }
        Rule::Concurrent { limit } => {
            let in_flight = match state {
                Some(CounterState::Concurrent { in_flight }) => in_flight,
                _ => 0,
            };
            if in_flight + cost <= limit {
                (
                    Reading {
                        limit,
                        remaining: limit - in_flight - cost,
                        reset: Duration::ZERO,
                        retry_after: Duration::ZERO,
                    },
                    Some(CounterState::Concurrent {
                        in_flight: in_flight + cost,
                    }),
                )
            } else {
                // Nobody knows when a request in flight ends: one second is a fair hint.
                (
                    Reading {
                        limit,
                        remaining: 0,
                        reset: Duration::ZERO,
                        retry_after: Duration::from_secs(1),
                    },
                    None,
                )
            }
        }
    }
}

/// Adds `delta` (negative: gives back) to a counter after the fact: token settlement, a refund,
/// a concurrency slot released. Never refuses; never goes below empty.
pub fn adjust(rule: Rule, state: Option<CounterState>, delta: i64, now_ms: u64) -> CounterState {
    match rule {
        Rule::Smooth { limit } => {
            let level = smooth_level(limit, state, now_ms);
            CounterState::Smooth {
                level: (level + delta as f64).max(0.0),
                at_ms: now_ms,
            }
        }
        Rule::Calendar { window, .. } => {
            let (start, _) = window.calendar_bounds(now_ms);
            let used = match state {
                Some(CounterState::Calendar {
                    window_start_ms,
                    used,
                }) if window_start_ms == start => used,
                // A reservation made in a previous window is not given back to this one.
                _ => 0,
            };
            CounterState::Calendar {
                window_start_ms: start,
                used: used.saturating_add_signed(delta),
            }
        }
        Rule::Concurrent { .. } => {
            let in_flight = match state {
                Some(CounterState::Concurrent { in_flight }) => in_flight,
                _ => 0,
            };
            CounterState::Concurrent {
                in_flight: in_flight.saturating_add_signed(delta),
            }
        }
    }
}

/// Whether a state says nothing a fresh counter would not: it can be evicted.
pub fn is_idle(state: CounterState, now_ms: u64) -> bool {
    match state {
        CounterState::Smooth { level, at_ms } => {
            // Drained at the slowest rate a limit can have (1 per minute) bounds the drain time.
            level <= 0.0 || now_ms.saturating_sub(at_ms) as f64 >= level * MINUTE_MS as f64
        }
        CounterState::Calendar {
            window_start_ms, ..
        } => {
            // Months are the longest windows: past 31 days, any window it counted for is over.
            now_ms.saturating_sub(window_start_ms) >= 31 * DAY_MS
        }
        CounterState::Concurrent { in_flight } => in_flight == 0,
    }
}

/// The level of a smooth counter drained to `now_ms`.
fn smooth_level(limit: u64, state: Option<CounterState>, now_ms: u64) -> f64 {
    match state {
        Some(CounterState::Smooth { level, at_ms }) => {
            let elapsed = now_ms.saturating_sub(at_ms) as f64;
            (level - elapsed * limit as f64 / MINUTE_MS as f64).max(0.0)
        }
        _ => 0.0,
    }
}

fn ms(millis: f64) -> Duration {
    Duration::from_millis(millis.max(0.0) as u64)
}

/// `[first of this month, first of next month)` in UTC, in ms since the epoch.
fn month_bounds(now_ms: u64) -> (u64, u64) {
    let seconds = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let Ok(now) = OffsetDateTime::from_unix_timestamp(seconds) else {
        return (now_ms, u64::MAX);
    };
    let date = now.date();
    let (year, month) = (date.year(), date.month());
    let start = time::Date::from_calendar_date(year, month, 1);
    let (next_year, next_month) = match month {
        time::Month::December => (year + 1, time::Month::January),
        other => (year, other.next()),
    };
    let end = time::Date::from_calendar_date(next_year, next_month, 1);
    match (start, end) {
        (Ok(start), Ok(end)) => {
            let to_ms =
                |date: time::Date| date.midnight().assume_utc().unix_timestamp() as u64 * 1000;
            (to_ms(start), to_ms(end))
        }
        _ => (now_ms, u64::MAX),
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(duration: Duration) -> String {
    let mut text = String::with_capacity(16);
    // Writing into a String cannot fail.
    let _ = write_openai_duration(duration, &mut text);
    text
}

/// [`openai_duration`] into `out` (a header value's buffer): pieces through itoa rather than
/// `format!`, since this runs for every rate-limit header of every admitted request (issue 16).
pub fn write_openai_duration(
    duration: Duration,
    out: &mut impl std::fmt::Write,
) -> std::fmt::Result {
    let mut push = |number: u64, unit: &str| {
        out.write_str(itoa::Buffer::new().format(number))?;
        out.write_str(unit)
    };
    let total_ms = duration.as_millis();
    if total_ms < 1000 {
        return push(total_ms as u64, "ms");
    }
    let seconds = duration.as_secs_f64().ceil() as u64;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        push(hours, "h")?;
    }
    if hours > 0 || minutes > 0 {
        push(minutes, "m")?;
    }
    push(seconds, "s")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T10:00:00Z, a Tuesday.
    const NOW: u64 = 1_796_119_200_000;

    /// Charges `costs` one after another at the given times; returns which fit.
    fn run(rule: Rule, steps: &[(u64, u64)]) -> Vec<bool> {
        let mut state = None;
        steps
            .iter()
            .map(|&(at, cost)| {
                let (_, after) = check(rule, state, cost, NOW + at);
                if let Some(after) = after {
                    state = Some(after);
                }
                after.is_some()
            })
            .collect()
    }

    #[test]
    fn a_smooth_limit_allows_a_full_burst_then_one_per_interval() {
        let rule = Rule::Smooth { limit: 60 };
        let mut steps = vec![(0, 1); 61];
        // One unit drains per second: at 999 ms still full, at 1000 ms room for one.
        steps.push((999, 1));
        steps.push((1000, 1));
        steps.push((1000, 1));
        let fits = run(rule, &steps);
        assert_eq!(fits.iter().take(60).filter(|f| **f).count(), 60);
        assert_eq!(&fits[60..], &[false, false, true, false]);
    }

    #[test]
    fn smooth_readings_say_what_remains_and_when_to_retry() {
        let rule = Rule::Smooth { limit: 100 };
        let (reading, after) = check(rule, None, 40, NOW);
        assert_eq!(reading.remaining, 60);
        assert_eq!(reading.reset, Duration::from_secs(24));
        let (reading, refused) = check(rule, after, 70, NOW);
        assert!(refused.is_none());
        assert_eq!(reading.remaining, 60);
        // 10 units over at 0.6 s each.
        assert_eq!(reading.retry_after, Duration::from_secs(6));
    }

    #[test]
    fn odd_limits_stay_exact() {
        // 7 per minute: no rounded emission interval lets an eighth through.
        let fits = run(Rule::Smooth { limit: 7 }, &[(0, 1); 8]);
        assert_eq!(fits, [true, true, true, true, true, true, true, false]);
        let fits = run(
            Rule::Smooth { limit: 700_000_000 },
            &[(0, 700_000_000), (0, 1)],
        );
        assert_eq!(fits, [true, false]);
    }

    #[test]
    fn refunds_and_overcharges_move_the_meter() {
        let rule = Rule::Smooth { limit: 100 };
        let (_, state) = check(rule, None, 100, NOW);
        let refunded = adjust(rule, state, -30, NOW);
        let (reading, fits) = check(rule, Some(refunded), 30, NOW);
        assert!(fits.is_some());
        assert_eq!(reading.remaining, 0);
        let over = adjust(rule, fits, 50, NOW);
        let (reading, _) = check(rule, Some(over), 1, NOW);
        assert_eq!(reading.retry_after, Duration::from_millis(30_600));
        assert_eq!(
            adjust(rule, None, -5, NOW),
            CounterState::Smooth {
                level: 0.0,
                at_ms: NOW
            }
        );
    }

    #[test]
    fn calendar_windows_are_utc_and_reset_at_their_end() {
        let rule = Rule::windowed(2, Window::Hour);
        let fits = run(rule, &[(0, 1), (1, 1), (2, 1), (HOUR_MS, 1)]);
        assert_eq!(fits, [true, true, false, true]);
        let (reading, _) = check(rule, None, 3, NOW + 15 * 60_000);
        assert_eq!(reading.retry_after, Duration::from_secs(45 * 60));
        assert_eq!(
            Window::Day.calendar_bounds(NOW + 1),
            (NOW - 10 * HOUR_MS, NOW + 14 * HOUR_MS)
        );
    }

    #[test]
    fn months_follow_the_calendar() {
        let check = |now: &str, start: &str, end: &str| {
            let parse = |t: &str| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp() as u64
                    * 1000
            };
            assert_eq!(
                Window::Month.calendar_bounds(parse(now)),
                (parse(start), parse(end)),
                "{now}"
            );
        };
        check(
            "2026-12-31T23:59:59Z",
            "2026-12-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        check(
            "2028-02-29T12:00:00Z",
            "2028-02-01T00:00:00Z",
            "2028-03-01T00:00:00Z",
        );
        check(
            "2027-01-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
            "2027-02-01T00:00:00Z",
        );
    }

    #[test]
    fn concurrency_counts_slots_and_releases_them() {
        let rule = Rule::Concurrent { limit: 2 };
        let (_, one) = check(rule, None, 1, NOW);
        let (_, two) = check(rule, one, 1, NOW);
        let (reading, three) = check(rule, two, 1, NOW);
        assert!(three.is_none());
        assert_eq!(reading.retry_after, Duration::from_secs(1));
        let released = adjust(rule, two, -1, NOW);
        assert!(check(rule, Some(released), 1, NOW).1.is_some());
        assert!(is_idle(adjust(rule, Some(released), -1, NOW), NOW));
    }

    #[test]
    fn idle_counters_are_recognised() {
        let smooth = CounterState::Smooth {
            level: 2.0,
            at_ms: NOW,
        };
        assert!(!is_idle(smooth, NOW + 60_000));
        assert!(is_idle(smooth, NOW + 120_000));
        let calendar = CounterState::Calendar {
            window_start_ms: NOW,
            used: 5,
        };
        assert!(!is_idle(calendar, NOW + DAY_MS));
        assert!(is_idle(calendar, NOW + 31 * DAY_MS));
    }

    #[test]
    fn durations_render_like_openai() {
        let check = |ms: u64, expected: &str| {
            assert_eq!(openai_duration(Duration::from_millis(ms)), expected);
        };
        check(20, "20ms");
        check(1000, "1s");
        check(1200, "2s");
        check(360_000, "6m0s");
        check(3_723_000, "1h2m3s");
    }
}
