//! record: the one log line and the metrics of a request, written when its `AccessLog` (the
//! request's context: id, client, model, endpoint, admission, usage tap) is dropped: after the
//! last byte of its answer went out, or when the client went away (status 499, nginx's "client
//! closed request"), so a stream's line carries its whole duration.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};

use crate::proxy::headers::request_id;

use super::admit::Admission;
use super::operation::Operation;
use crate::errors::ApiError;
use crate::metrics::{Metrics, RequestRecord};
use crate::proxy::usage::{Usage, UsageReader};
use crate::routing::endpoint::Endpoint;

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
    pub admission: Option<Admission>,
}

impl AccessLog {
    /// The log of the request a handler serves: the id the middleware gave it, its client, and
    /// counted in `metrics` (in flight until the line is written).
    pub fn of_request(request: &HttpRequest, operation: Operation, metrics: &Arc<Metrics>) -> Self {
        let (method, path) = (operation.method(), operation.path());
        // The accept middleware made the request's record; the pipeline takes it over.
        let mut log = request
            .extensions_mut()
            .remove::<AccessLog>()
            .unwrap_or_else(|| {
                Self::start(
                    request_id(request.headers()),
                    method,
                    path,
                    request.peer_addr(),
                )
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

impl Drop for AccessLog {
    fn drop(&mut self) {
        let usage: Option<Usage> = self.usage.as_mut().and_then(UsageReader::finish);
        let first_token = self.usage.as_ref().and_then(UsageReader::first_token);
        if let Some(admission) = self.admission.as_mut() {
            admission.settle(usage.as_ref());
        }
        let duration = self.started.elapsed();
        let endpoint = self.endpoint.as_deref();
        // No status: the client left before the answer's head.
        let status = self.status.unwrap_or(CLIENT_CLOSED_STATUS);
        tracing::info!(
            target: "llmux::access",
            request_id = self.request_id(),
            method = self.method,
            path = self.path,
            model = self.model.as_deref().unwrap_or(""),
            provider = endpoint.map_or("", |e| &*e.provider),
            target_model = endpoint.map_or("", |e| &*e.target_model_name),
            upstream_host = endpoint.map_or("", |e| &*e.upstream_host),
            status,
            duration_ms = duration.as_secs_f64() * 1000.0,
            ttfb_ms = self.first_byte.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms = first_token.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens = usage.map(|u| u.prompt),
            completion_tokens = usage.map(|u| u.completion),
            tokens_estimated = usage.map(|u| u.estimated),
            stream = self.stream,
            bytes = self.bytes,
            outcome = self.outcome.as_str(),
            // Written through the formatter's reused buffer: `to_string` allocated per line.
            client = self.client.map(tracing::field::display),
            attempts = self.attempts,
            "request"
        );
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
            });
            metrics.request_ended();
        }
    }
}
