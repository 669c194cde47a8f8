//! attempt: attempts on a pool: pick a member, send, and on a retryable failure wait and try the next
//! member, all before the client gets a response head and within the request's timeout.
//!
//! Retryable: connect errors, timeouts before the response head, 429, 500, 502, 503, 504. Never
//! another 4xx, never once the answer is streaming to the client (this loop returns as soon as it
//! has a response head it keeps). Between attempts: the upstream's Retry-After (or, on a 429,
//! x-ratelimit-reset-*) when the next attempt goes to the same member, else exponential backoff
//! with full jitter. A wait above `max_retry_wait` sends the answer back as it is (a 429 keeps its
//! Retry-After); so does a wait that would end past the request's deadline.
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, HttpDate};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use tokio::time::Instant;

use super::operation::Operation;
use super::record::{AccessLog, Outcome};
use super::route::{capture_response_id, Routed};
use crate::errors::ApiError;
use crate::proxy::forward::{attempt as send_attempt, failure_outcome, respond, UpstreamResponse};
use crate::proxy::image_answer;
use crate::proxy::rewrite::{self, AnswerRewrite};
use crate::routing::breaker::{now_ms, BreakerPolicy, Transition, Verdict};
use crate::routing::endpoint::Endpoint;
use crate::routing::pool::Pool;
use crate::state::AppState;
use crate::upstream::UpstreamClients;

pub const X_LLMUX_ATTEMPTS: HeaderName = HeaderName::from_static("x-llmux-attempts");
pub const X_LLMUX_UPSTREAM: HeaderName = HeaderName::from_static("x-llmux-upstream");
/// Honoured by the OpenAI SDKs: `false` stops their own retries (issue 20: llmux's 3 attempts
/// times the SDK's 3 made 9 upstream calls).
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// First backoff ceiling; doubles every retry up to `BACKOFF_CAP`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// The most of a retried error answer's body read to keep its connection; the rest is dropped.
const DISCARD_LIMIT: usize = 1024 * 1024;

/// What `x-llmux-upstream` shows (`--upstream-header`): nothing by default, since the upstream
/// identity maps the private topology for any client (issue 20); `name` shows the member as
/// `provider/target_model`, never its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamHeader {
    #[default]
    Off,
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest upstream-requested wait honoured (`--max-retry-wait`).
    pub max_retry_wait: Duration,
    pub breaker: BreakerPolicy,
}

/// A request ready for any member of its pool: the body as the client sent it (plus what llmux
/// asks for on its own, like `stream_options.include_usage`) and where its `model` value is, so
/// each attempt splices in its own member's target model.
pub struct Outbound {
    pub operation: Operation,
    pub routed: Routed,
    pub body: Bytes,
    pub model_span: Range<usize>,
}

/// The upstream client for `endpoint`: the one place that chooses it. One per TLS profile per
/// worker (`upstream::UpstreamClients`): the endpoint's CA bundle and client certificate, or the
/// default client; each has its own keep-alive pool.
pub fn client_for(clients: &UpstreamClients, endpoint: &Endpoint) -> awc::Client {
    clients.for_endpoint(endpoint)
}

/// How one attempt ended, classified once: whether another attempt may follow, what the
/// member's circuit breaker makes of it, and its outcome (the access log's and the metrics'
/// label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub retryable: bool,
    pub verdict: Verdict,
    pub outcome: Outcome,
}

/// Classifies an attempt: connect errors, timeouts before the head and 429/500/502/503/504 are
/// retryable; any other answer is the client's.
pub fn classify(result: &Result<UpstreamResponse, ApiError>) -> Classified {
    let (retryable, verdict, outcome) = match result {
        Ok(response) => match response.status().as_u16() {
            429 => (true, Verdict::Neutral, Outcome::Retried),
            500 | 502 | 503 | 504 => (true, Verdict::Failed, Outcome::Retried),
            _ => (false, Verdict::Healthy, Outcome::Ok),
        },
        Err(ApiError::UpstreamTimeout { .. }) => (true, Verdict::Failed, Outcome::UpstreamTimeout),
        Err(ApiError::UpstreamUnreachable { .. }) => {
            (true, Verdict::Failed, Outcome::UpstreamUnreachable)
        }
        Err(_) => (false, Verdict::Healthy, Outcome::Rejected),
    };
    Classified {
        retryable,
        verdict,
        outcome,
    }
}

/// Serves `outbound` from its pool, retrying as the module comment says. Always answers: an
/// upstream answer passed through, or llmux's own error, with `x-llmux-attempts` and
/// `x-llmux-upstream` naming the last member tried.
pub async fn forward_with_retries(
    clients: &UpstreamClients,
    request: &HttpRequest,
    outbound: Outbound,
    state: &AppState,
    mut log: Box<AccessLog>,
) -> HttpResponse {
    let policy = &state.retry;
    let pool = outbound.routed.pool();
    let sticky = outbound.routed.sticky;
    let mut index = sticky.unwrap_or_else(|| pool.select());
    let first = &pool.members()[index];
    let (first_timeout, max_retries) = (first.request_timeout, first.max_retries);
    // The request's deadline: `first_timeout` after the first attempt's send.
    let mut budget: Option<Instant> = None;
    let mut attempt: u32 = 1;
    loop {
        let member = Arc::clone(&pool.members()[index]);
        log.endpoint = Some(Arc::clone(&member));
        log.attempts = attempt;
        let uri = match outbound.routed.uri_for(&member) {
            Ok(uri) => uri,
            Err(error) => return finish(Err(error), &member, attempt, log, None, state).await,
        };
        // Each member gets the body rewritten for it (its model name, its adaptations).
        let (body, answer) = match rewrite::request(
            &member,
            outbound.operation,
            &outbound.body,
            outbound.model_span.clone(),
        ) {
            Ok(rewritten) => rewritten,
            Err(error) => return finish(Err(error), &member, attempt, log, None, state).await,
        };
        let client = client_for(clients, &member);
        if let Some(trace) = log.trace.as_mut() {
            trace.start_attempt(&member, outbound.operation.path(), attempt);
        }
        // The first attempt's budget is the whole deadline, which starts as the upstream wait
        // does: one clock read for both (issue 16).
        let expires = match budget {
            None => {
                let now = Instant::now();
                log.upstream_begin_at(now.into_std());
                *budget.insert(later_by(now, first_timeout))
            }
            Some(deadline) => {
                log.upstream_begin();
                deadline.min(later_by(Instant::now(), member.request_timeout))
            }
        };
        let deadline = budget.unwrap_or(expires);
        let result = send_attempt(&client, request, &member, uri, body, &log, expires).await;
        let classified = classify(&result);
        if let Some(trace) = log.trace.as_mut() {
            let (status, outcome) = match &result {
                Ok(response) => (Some(response.status().as_u16()), classified.outcome),
                Err(error) => (None, failure_outcome(error)),
            };
            trace.end_attempt(status, outcome.as_str());
        }
        record_breaker(pool, &member, classified.verdict, policy, &log);
        if !classified.retryable {
            return match result {
                // Most answers need no tap but the usage reader: answered here, without the
                // respond stage's futures, each of which moved the upstream's answer once more
                // (issue 16).
                Ok(response) if answer == AnswerRewrite::default() => {
                    let mut response = respond(response, &member, log);
                    attempt_headers(&mut response, attempt, &member, state.upstream_header);
                    response
                }
                result => finish(result, &member, attempt, log, Some(answer), state).await,
            };
        }
        let outcome = describe(&result);
        let error = result.as_ref().err().map(ToString::to_string);
        if attempt > max_retries {
            tracing::warn!(request_id = log.request_id(), attempt, member = %member.identity(), outcome, error, "upstream attempt failed; no retries left");
            let response = finish(result, &member, attempt, log, Some(answer), state).await;
            return gave_up(response, attempt);
        }
        let next = match sticky {
            Some(sticky) => sticky,
            None => pool.select_after_failure(index),
        };
        let asked = match (&result, next == index) {
            (Ok(response), true) => requested_wait(response.status(), response.headers()),
            _ => None,
        };
        if asked.is_some_and(|wait| wait > policy.max_retry_wait) {
            tracing::warn!(request_id = log.request_id(), attempt, member = %member.identity(), outcome, asked_wait_s = asked.map(|w| w.as_secs_f64()), max_retry_wait_s = policy.max_retry_wait.as_secs_f64(), "upstream asks for a longer wait than allowed; answering the client");
            return finish(result, &member, attempt, log, Some(answer), state).await;
        }
        let wait = asked.unwrap_or_else(|| backoff(attempt));
        // Checked: the wait comes from the upstream (issue 20: `Instant + Duration` panics on
        // overflow).
        let wake = Instant::now()
            .checked_add(wait)
            .filter(|wake| *wake < deadline);
        let Some(wake) = wake else {
            tracing::warn!(request_id = log.request_id(), attempt, member = %member.identity(), outcome, error, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "upstream attempt failed; no time left to retry");
            let response = finish(result, &member, attempt, log, Some(answer), state).await;
            return gave_up(response, attempt);
        };
        tracing::warn!(request_id = log.request_id(), attempt, member = %member.identity(), outcome, error, wait_ms = wait.as_millis() as u64, next = %pool.members()[next].identity(), "upstream attempt failed; retrying");
        if let Some(metrics) = &log.metrics {
            match &result {
                Ok(response) => metrics.record_attempt("retried", response.status().as_u16()),
                Err(_) => metrics.record_attempt(classified.outcome.as_str(), 0),
            }
        }
        if let Ok(response) = result {
            // Boxed: retries are rare, and every request's future would carry its state.
            Box::pin(discard(response, deadline)).await;
        }
        tokio::time::sleep_until(wake).await;
        index = next;
        attempt += 1;
    }
}

/// `start + duration`, or a time too far to ever be reached when that overflows.
fn later_by(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365))
}

/// The answer once llmux retried a failure and gave up: `x-should-retry: false`, so the client's
/// SDK does not multiply the attempts llmux already made. A first attempt that was not retried
/// (`max_retries: 0`) leaves the client's retries alone.
fn gave_up(mut response: HttpResponse, attempts: u32) -> HttpResponse {
    if attempts > 1 {
        response
            .headers_mut()
            .insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    response
}

fn describe(result: &Result<UpstreamResponse, ApiError>) -> String {
    match result {
        Ok(response) => format!("status {}", response.status().as_u16()),
        Err(error) => failure_outcome(error).as_str().to_owned(),
    }
}

/// Feeds an attempt's verdict to the member's circuit breaker and logs what that changed.
pub fn record_breaker(
    pool: &Pool,
    member: &Endpoint,
    verdict: Verdict,
    policy: &RetryPolicy,
    log: &AccessLog,
) {
    // Only a failure reads the time: the clock read cost more than the rest of a healthy
    // verdict's record (issue 16).
    let now = match verdict {
        Verdict::Failed => now_ms(),
        Verdict::Healthy | Verdict::Neutral => 0,
    };
    match member.breaker.record(verdict, &policy.breaker, now) {
        Some(Transition::Ejected { cooldown, failures }) => tracing::warn!(
            request_id = log.request_id(),
            member = %member.identity(),
            model = %member.exposed_model,
            path = %member.path,
            failures,
            cooldown_s = cooldown.as_secs_f64(),
            pool_size = pool.members().len(),
            "pool member ejected"
        ),
        Some(Transition::Readmitted) => tracing::info!(
            request_id = log.request_id(),
            member = %member.identity(),
            model = %member.exposed_model,
            path = %member.path,
            "pool member re-admitted"
        ),
        None => {}
    }
}

/// The client's response for the last attempt, with the attempt headers: the upstream's answer
/// through the response taps the request needs (`answer`), or llmux's error. The attempt loop
/// already wrote the one warn line a failure deserves.
async fn finish(
    result: Result<UpstreamResponse, ApiError>,
    member: &Arc<Endpoint>,
    attempts: u32,
    mut log: Box<AccessLog>,
    answer: Option<AnswerRewrite>,
    state: &AppState,
) -> HttpResponse {
    let mut response = match result {
        Ok(response) => respond_with(response, member, log, answer, state).await,
        Err(error) => {
            log.upstream_end();
            log.status = Some(error.status_code().as_u16());
            log.outcome = failure_outcome(&error);
            error.error_response()
        }
    };
    attempt_headers(&mut response, attempts, member, state.upstream_header);
    response
}

/// The respond stage for an upstream answer: headers, body stream, then the taps the request
/// asked for (base64 embeddings, image URLs, response-id capture).
async fn respond_with(
    response: UpstreamResponse,
    member: &Arc<Endpoint>,
    log: Box<AccessLog>,
    answer: Option<AnswerRewrite>,
    state: &AppState,
) -> HttpResponse {
    let Some(answer) = answer else {
        return respond(response, member, log);
    };
    if let Some(images) = answer.images {
        // Boxed: its state (a whole answer being read) would make every request's future larger.
        return Box::pin(image_answer::answer(
            response,
            member,
            images,
            &state.base_url,
            &*state.images,
            log,
        ))
        .await;
    }
    let response = respond(response, member, log);
    // Boxed like the images answer: only embeddings requests read their answer whole.
    let mut response = match answer.base64_embeddings {
        true => Box::pin(rewrite::answer(answer, member, response))
            .await
            .unwrap_or_else(|error| error.error_response()),
        false => response,
    };
    if answer.capture_response_id {
        response = capture_response_id(response, member, &state.responses);
    }
    response
}

/// `x-llmux-attempts` on every forwarded request's answer, and `x-llmux-upstream` when `shown`.
/// The answer has neither yet: an upstream answer's headers came through
/// `proxy::headers::copy_answer_headers`, which leaves an upstream's own of those names behind
/// (they would tell what llmux did not), and llmux's own errors have none.
pub fn attempt_headers(
    response: &mut HttpResponse,
    attempts: u32,
    member: &Endpoint,
    shown: UpstreamHeader,
) {
    let headers = response.headers_mut();
    // Appended: an insert into actix's map costs twice as much (it moves the old values out),
    // and there are none (issue 16).
    headers.append(X_LLMUX_ATTEMPTS, attempts_value(attempts));
    if shown == UpstreamHeader::Name {
        headers.append(X_LLMUX_UPSTREAM, member.public_identity());
    }
}

/// The count as a header value, without formatting (and allocating) one for the usual counts.
fn attempts_value(attempts: u32) -> HeaderValue {
    const COUNTS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match COUNTS.get(attempts as usize) {
        Some(count) => HeaderValue::from_static(count),
        None => HeaderValue::from(attempts),
    }
}

/// Reads a retried answer's body to its end (bounded in size and time) so its connection can
/// serve again; what cannot be read is dropped with the connection.
async fn discard(mut response: UpstreamResponse, deadline: Instant) {
    let read = response.body().limit(DISCARD_LIMIT);
    let _ = tokio::time::timeout_at(deadline, read).await;
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(retry - 1))].
pub fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(BACKOFF_CAP);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}

/// The wait an answer asks for: `retry-after-ms`, `retry-after` (seconds or an HTTP date) and,
/// on a 429, the longest `x-ratelimit-reset-*` (`1s`, `6m0s`, `20ms`).
pub fn requested_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(millis) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(wait) = seconds(millis / 1000.0) {
            return Some(wait);
        }
    }
    if let Some(value) = text("retry-after") {
        if let Ok(number) = value.parse::<f64>() {
            return seconds(number);
        }
        if let Ok(date) = value.parse::<HttpDate>() {
            let at: SystemTime = date.into();
            return Some(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    if status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-ratelimit-reset"))
        .filter_map(|(_, value)| value.to_str().ok().and_then(parse_reset))
        .max()
}

/// A number of seconds an upstream asked for, saturated: a wait too long for `Duration`
/// (`Retry-After: 1e20`) is the longest wait, which no `--max-retry-wait` allows, so the answer
/// goes back to the client (issue 20: it was dropped and llmux retried at once). Negative waits
/// are no wait; NaN is no answer.
fn seconds(number: f64) -> Option<Duration> {
    if number.is_nan() {
        return None;
    }
    Some(Duration::try_from_secs_f64(number.max(0.0)).unwrap_or(Duration::MAX))
}

/// A Go-style duration as OpenAI writes rate-limit resets (`1s`, `6m0s`, `1h2m3.5s`, `20ms`), or
/// plain seconds.
fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(number) = text.parse::<f64>() {
        return seconds(number);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, headers: &[(&'static str, &str)], expected: Option<Duration>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(requested_wait(status, &map), expected, "{headers:?}");
    }

    #[test]
    fn requested_waits_are_read_from_every_header_form() {
        let secs = Duration::from_secs;
        check(429, &[("retry-after", "1")], Some(secs(1)));
        check(
            503,
            &[("retry-after", "2.5")],
            Some(Duration::from_millis(2500)),
        );
        check(
            429,
            &[("retry-after-ms", "150"), ("retry-after", "9")],
            Some(Duration::from_millis(150)),
        );
        check(
            429,
            &[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")],
            Some(Duration::ZERO),
        );
        check(
            429,
            &[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ],
            Some(secs(360)),
        );
        check(
            429,
            &[("x-ratelimit-reset-tokens", "20ms")],
            Some(Duration::from_millis(20)),
        );
        // On other statuses the rate-limit resets say nothing about this failure.
        check(500, &[("x-ratelimit-reset-tokens", "6m0s")], None);
        check(429, &[("retry-after", "soon")], None);
        // Issue 20: waits too long for a `Duration` saturate (and so exceed any allowed wait).
        check(429, &[("retry-after", "1e20")], Some(Duration::MAX));
        check(429, &[("retry-after-ms", "1e300")], Some(Duration::MAX));
        check(
            429,
            &[("x-ratelimit-reset-tokens", "99999999999999999999h")],
            Some(Duration::MAX),
        );
        check(429, &[("retry-after", "-5")], Some(Duration::ZERO));
        check(429, &[], None);
        let in_a_minute = HttpDate::from(SystemTime::now() + secs(60)).to_string();
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static("retry-after"),
            HeaderValue::from_str(&in_a_minute).unwrap(),
        );
        let wait = requested_wait(StatusCode::TOO_MANY_REQUESTS, &map).unwrap();
        assert!(wait > secs(55) && wait <= secs(60), "{wait:?}");
    }

    #[test]
    fn rate_limit_resets_parse_go_durations() {
        for (text, millis) in [
            ("1h2m3.5s", 3_723_500),
            ("0.5", 500),
            ("250ms", 250),
            ("2m", 120_000),
        ] {
            assert_eq!(
                parse_reset(text),
                Some(Duration::from_millis(millis)),
                "{text}"
            );
        }
        assert_eq!(parse_reset("3 days"), None);
        assert_eq!(parse_reset("5x"), None);
    }

    #[test]
    fn attempt_counts_are_written_in_decimal() {
        for attempts in [0, 1, 9, 10, 12, u32::MAX] {
            assert_eq!(attempts_value(attempts), attempts.to_string().as_str());
        }
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_capped_ceiling() {
        for retry in 1..=10 {
            let ceiling = (BACKOFF_BASE * 2u32.pow(retry - 1)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(retry) <= ceiling);
            }
        }
        assert!((0..200).any(|_| backoff(5) > Duration::from_millis(100)));
    }
}
