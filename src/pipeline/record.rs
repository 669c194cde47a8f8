//! record: the one log line and the metrics of a request, written when its `AccessLog` (the
//! request's context: id, client, model, endpoint, admission, usage tap) is dropped: after the
//! last byte of its answer went out, or when the client went away (status 499, nginx's "client
//! closed request"), so a stream's line carries its whole duration.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::proxy::headers::request_id;

use super::accept;
use super::admit::Admission;
use super::operation::Operation;
use crate::access::admit::Caller;
use crate::errors::{echo, ApiError};
use crate::metrics::{Metrics, RequestRecord};
use crate::proxy::usage::{Usage, UsageReader};
use crate::realtime::relay::SessionSummary;
use crate::routing::endpoint::Endpoint;
use crate::telemetry::{self, LineFields, RenderedPairs};
use crate::traces::{Finished, RequestTrace};

/// How a request ended, as the access log and the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The answer went out whole (whatever its status: upstream errors are answers).
    Ok,
    /// The client went away before the answer was complete.
    ClientClosed,
    /// llmux refused the request (bad body, unknown model, not admitted, ...).
    Rejected,
    UpstreamTimeout,
    UpstreamUnreachable,
    /// The upstream's body failed mid-way.
    UpstreamBodyError,
    /// The upstream went silent mid-body for longer than its request timeout.
    UpstreamIdleTimeout,
    /// An attempt whose answer was dropped for another attempt (metrics of attempts only).
    Retried,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientClosed => "client_closed",
            Self::Rejected => "rejected",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamBodyError => "upstream_body_error",
            Self::UpstreamIdleTimeout => "upstream_idle_timeout",
            Self::Retried => "retried",
        }
    }
}

/// The status recorded for a request whose client left before the answer's head.
pub const CLIENT_CLOSED_STATUS: u16 = 499;

#[derive(Debug)]
pub struct AccessLog {
    pub request_id: HeaderValue,
    pub method: &'static str,
    pub path: &'static str,
    pub client: Option<SocketAddr>,
    pub started: Instant,
    pub model: Option<Box<str>>,
    pub endpoint: Option<Arc<Endpoint>>,
    pub status: Option<u16>,
    pub first_byte: Option<Duration>,
    pub stream: bool,
    pub bytes: u64,
    /// How the request ended; `ClientClosed` until a stage says otherwise.
    pub outcome: Outcome,
    /// Upstream attempts made (retries included); 0 when none was.
    pub attempts: u32,
    /// Set by [`AccessLog::record_in`]: the request is counted in flight until its line is written.
    pub metrics: Option<Arc<Metrics>>,
    /// Reads the answer's token usage as it passes (set for requests that reach an endpoint).
    pub usage: Option<UsageReader>,
    /// What the admit stage granted; settled with the real usage when the line is written.
    /// Boxed, like `trace`: the record lives in every request's future and is moved with it,
    /// and these two were three quarters of its 2 KB while most requests have neither
    /// (issue 16).
    pub admission: Option<Box<Admission>>,
    /// The request's OpenTelemetry span (and its current attempt's), when tracing is on.
    pub trace: Option<Box<RequestTrace>>,
    /// Time spent waiting on upstreams so far: attempts, the waits between them and the
    /// answer's body (`llmux_overhead_seconds` is the duration minus this).
    pub upstream_wait: Duration,
    /// Set while an upstream call is outstanding.
    upstream_since: Option<Instant>,
    /// What a realtime session did (`GET /v1/realtime`), written in the same line.
    pub realtime: Option<SessionSummary>,
    /// The client key's name and owner (never the key), when access control recognised one.
    pub caller: Option<Caller>,
}

impl AccessLog {
    /// The log of the request a handler serves: the id the middleware gave it, its client, and
    /// counted in `metrics` (in flight until the line is written).
    pub fn of_request(request: &HttpRequest, operation: Operation, metrics: &Arc<Metrics>) -> Self {
        *Self::boxed_of_request(request, operation, metrics)
    }

    /// `of_request`, boxed: the accept middleware's record is boxed already, so taking it over
    /// moves a pointer (issue 16).
    pub fn boxed_of_request(
        request: &HttpRequest,
        operation: Operation,
        metrics: &Arc<Metrics>,
    ) -> Box<Self> {
        let (method, path) = (operation.method(), operation.path());
        // The accept middleware made the request's record; the pipeline takes it over.
        let mut log = accept::take_record(request).unwrap_or_else(|| {
            Box::new(Self::start(
                request_id(request.headers()),
                method,
                path,
                request.peer_addr(),
            ))
        });
        log.method = method;
        log.path = path;
        log.record_in(Arc::clone(metrics));
        log
    }

    pub fn start(
        request_id: HeaderValue,
        method: &'static str,
        path: &'static str,
        client: Option<SocketAddr>,
    ) -> Self {
        Self {
            request_id,
            method,
            path,
            client,
            started: Instant::now(),
            model: None,
            endpoint: None,
            status: None,
            first_byte: None,
            stream: false,
            bytes: 0,
            outcome: Outcome::ClientClosed,
            attempts: 0,
            metrics: None,
            usage: None,
            admission: None,
            caller: None,
            trace: None,
            upstream_wait: Duration::ZERO,
            upstream_since: None,
            realtime: None,
        }
    }

    /// An upstream call starts (or goes on: a retry's wait counts as waiting on the upstream).
    pub fn upstream_begin(&mut self) {
        if self.upstream_since.is_none() {
            self.upstream_since = Some(Instant::now());
        }
    }

    /// `upstream_begin` with the time already read.
    pub fn upstream_begin_at(&mut self, now: Instant) {
        if self.upstream_since.is_none() {
            self.upstream_since = Some(now);
        }
    }

    /// The upstream is done with this request: its body ended, or it failed.
    pub fn upstream_end(&mut self) {
        self.upstream_end_at(Instant::now());
    }

    /// `upstream_end` with the time already read.
    pub fn upstream_end_at(&mut self, now: Instant) {
        if let Some(since) = self.upstream_since.take() {
            self.upstream_wait += now.saturating_duration_since(since);
        }
    }

    /// Records this request in `metrics` when its line is written; until then it is in flight.
    pub fn record_in(&mut self, metrics: Arc<Metrics>) {
        metrics.request_started();
        self.metrics = Some(metrics);
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// llmux refuses the request: the error's status, outcome `rejected`, the error's answer.
    pub fn reject(mut self, error: ApiError) -> HttpResponse {
        self.status = Some(error.status_code().as_u16());
        self.outcome = Outcome::Rejected;
        error.error_response()
    }
}

impl AccessLog {
    /// The access line's fields, in this order (a `None` leaves its key out).
    fn access_fields(
        &self,
        fields: &mut LineFields,
        status: u16,
        duration: Duration,
        usage: Option<Usage>,
        first_token: Option<Duration>,
    ) {
        let realtime = self.realtime.as_ref();
        fields
            .header_value("request_id", &self.request_id)
            .literal("method", self.method)
            .literal("path", self.path)
            // Cut: the model name is the client's text.
            .str("model", &echo(self.model.as_deref().unwrap_or("")));
        match &self.endpoint {
            Some(endpoint) => with_endpoint_pairs(endpoint, |pairs| {
                fields.pairs(pairs);
            }),
            None => endpoint_pairs(fields, None),
        }
        fields
            .number("status", status)
            .float("duration_ms", duration.as_secs_f64() * 1000.0)
            .opt_float("ttfb_ms", self.first_byte.map(|d| d.as_secs_f64() * 1000.0))
            .opt_float("ttft_ms", first_token.map(|d| d.as_secs_f64() * 1000.0))
            .opt_number("prompt_tokens", usage.map(|u| u.prompt))
            .opt_number("completion_tokens", usage.map(|u| u.completion))
            .opt_bool("tokens_estimated", usage.map(|u| u.estimated))
            .bool("stream", self.stream)
            .number("bytes", self.bytes)
            .literal("outcome", self.outcome.as_str());
        if let Some(client) = self.client {
            fields.socket_addr("client", client);
        }
        fields
            .number("attempts", self.attempts)
            .opt_str("session_ended_by", realtime.map(|r| r.ended_by.as_str()))
            .opt_number("close_code", realtime.and_then(|r| r.close_code))
            .opt_str("close_detail", realtime.and_then(|r| r.detail.as_deref()))
            .opt_number(
                "frames_from_client",
                realtime.map(|r| r.tally.frames_from_client),
            )
            .opt_number(
                "frames_from_upstream",
                realtime.map(|r| r.tally.frames_from_upstream),
            )
            .opt_number(
                "bytes_from_client",
                realtime.map(|r| r.tally.bytes_from_client),
            )
            .opt_str("key_name", self.caller.as_ref().map(|c| &*c.name))
            .opt_str("key_owner", self.caller.as_ref().map(|c| &*c.owner));
    }
}

/// `provider`, `target_model` and `upstream_host` of the access line: an endpoint's names, or
/// empty strings without one.
fn endpoint_pairs(fields: &mut LineFields, endpoint: Option<&Endpoint>) {
    fields
        .str("provider", endpoint.map_or("", |e| &*e.provider))
        .str(
            "target_model",
            endpoint.map_or("", |e| &*e.target_model_name),
        )
        .str("upstream_host", endpoint.map_or("", |e| &*e.upstream_host));
}

/// Runs `write` with `endpoint`'s pairs, rendered by the first line that names it: copying them
/// whole costs a tenth of checking and copying three strings and their keys (issue 16). Kept in
/// the endpoint, so a pool whose members take turns finds each member's pairs ready too; a
/// reload makes new endpoints, with pairs of their own.
fn with_endpoint_pairs(endpoint: &Endpoint, write: impl FnOnce(&RenderedPairs)) {
    write(
        endpoint
            .log_pairs
            .get_or_init(|| RenderedPairs::new(|fields| endpoint_pairs(fields, Some(endpoint)))),
    );
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let usage: Option<Usage> = self.usage.as_mut().and_then(UsageReader::finish);
        let first_token = self.usage.as_ref().and_then(UsageReader::first_token);
        if let Some(admission) = self.admission.as_mut() {
            admission.settle(usage.as_ref(), self.outcome);
        }
        // One clock read for both (about 250 instructions each under callgrind, issue 16).
        let now = Instant::now();
        self.upstream_end_at(now);
        let duration = now.saturating_duration_since(self.started);
        let endpoint = self.endpoint.as_deref();
        // No status: the client left before the answer's head.
        let status = self.status.unwrap_or(CLIENT_CLOSED_STATUS);
        // The fields are rendered only when the line is written (`--log warn` filters it
        // out), straight into the line (`telemetry::access_line`).
        telemetry::access_line(telemetry::access_callsite!(), now, |fields| {
            self.access_fields(fields, status, duration, usage, first_token);
        });
        if let Some(trace) = self.trace.take() {
            (*trace).finish(&Finished {
                method: self.method,
                path: self.path,
                model: self.model.as_deref(),
                endpoint,
                status,
                outcome: self.outcome.as_str(),
                usage,
                attempts: self.attempts,
                stream: self.stream,
            });
        }
        if let Some(metrics) = &self.metrics {
            metrics.record(&RequestRecord {
                endpoint,
                path: self.path,
                status,
                stream: self.stream,
                duration,
                first_byte: self.first_byte,
                first_token,
                usage,
                outcome: self.outcome.as_str(),
                upstream_wait: (self.attempts > 0).then_some(self.upstream_wait),
            });
            metrics.request_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::endpoint::tests::endpoint;

    fn rendered(write: impl FnOnce(&mut LineFields)) -> String {
        let mut text = String::new();
        LineFields::with(|fields| {
            write(fields);
            text = fields.as_str().to_owned();
        });
        text
    }

    #[test]
    fn each_line_names_its_own_endpoint_however_endpoints_follow_each_other() {
        let first = Arc::new(Endpoint {
            provider: Arc::from("first"),
            ..endpoint("a.json", "m", "v1/x", "target \"one\"")
        });
        let second = Arc::new(Endpoint {
            upstream_host: "[::1]:8080".into(),
            ..endpoint("b.json", "m", "v1/x", "two")
        });
        // The first one's twin, as a reload makes it: another endpoint, and other names here.
        let reloaded = Arc::new(Endpoint {
            provider: Arc::from("reloaded"),
            ..endpoint("a.json", "m", "v1/x", "target \"one\"")
        });
        for endpoint in [
            &first, &first, &second, &first, &reloaded, &reloaded, &second,
        ] {
            let cached = rendered(|fields| {
                with_endpoint_pairs(endpoint, |pairs| {
                    fields.pairs(pairs);
                })
            });
            let direct = rendered(|fields| endpoint_pairs(fields, Some(endpoint)));
            assert_eq!(cached, direct);
            assert!(direct.contains(&format!(r#""provider":"{}""#, endpoint.provider)));
        }
        assert_eq!(
            rendered(|fields| endpoint_pairs(fields, None)),
            r#","provider":"","target_model":"","upstream_host":"""#
        );
    }
}
