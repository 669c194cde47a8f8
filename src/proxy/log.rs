//! The one log line per request, written when the request is over: after the last byte of its
//! answer went out (or the client went away), so a stream's line carries its whole duration.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use actix_web::{HttpMessage, HttpRequest};

use super::headers::{request_id, RequestId};

use super::usage::{Usage, UsageReader};
use crate::metrics::{Metrics, RequestRecord};
use crate::routing::endpoint::Endpoint;

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
    /// Why the request ended other than normally (`client_closed`, `upstream_timeout`, ...).
    pub outcome: &'static str,
    /// Upstream attempts made (retries included); 0 when none was.
    pub attempts: u32,
    /// Set by [`AccessLog::record_in`]: the request is counted in flight until its line is written.
    pub metrics: Option<Arc<Metrics>>,
    /// Reads the answer's token usage as it passes (set for requests that reach an endpoint).
    pub usage: Option<UsageReader>,
}

impl AccessLog {
    /// The log of the request a handler serves: the id the middleware gave it, its client, and
    /// counted in `metrics` (in flight until the line is written).
    pub fn of_request(
        request: &HttpRequest,
        method: &'static str,
        path: &'static str,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map_or_else(|| request_id(request.headers()), |id| id.0.clone());
        let mut log = Self::start(request_id, method, path, request.peer_addr());
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
            outcome: "client_closed",
            attempts: 0,
            metrics: None,
            usage: None,
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
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let usage: Option<Usage> = self.usage.as_mut().and_then(UsageReader::finish);
        let first_token = self.usage.as_ref().and_then(UsageReader::first_token);
        let duration = self.started.elapsed();
        let endpoint = self.endpoint.as_deref();
        tracing::info!(
            target: "llmux::access",
            request_id = self.request_id(),
            method = self.method,
            path = self.path,
            model = self.model.as_deref().unwrap_or(""),
            provider = endpoint.map_or("", |e| &*e.provider),
            target_model = endpoint.map_or("", |e| &*e.target_model_name),
            upstream_host = endpoint.map_or("", |e| &*e.upstream_host),
            status = self.status.unwrap_or(0),
            duration_ms = duration.as_secs_f64() * 1000.0,
            ttfb_ms = self.first_byte.map(|d| d.as_secs_f64() * 1000.0),
            ttft_ms = first_token.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens = usage.map(|u| u.prompt),
            completion_tokens = usage.map(|u| u.completion),
            tokens_estimated = usage.map(|u| u.estimated),
            stream = self.stream,
            bytes = self.bytes,
            outcome = self.outcome,
            client = self.client.map(|c| c.to_string()),
            attempts = self.attempts,
            "request"
        );
        if let Some(metrics) = &self.metrics {
            metrics.record(&RequestRecord {
                endpoint,
                path: self.path,
                // No status: the client left before the answer's head (nginx's 499).
                status: self.status.unwrap_or(499),
                stream: self.stream,
                duration,
                first_byte: self.first_byte,
                first_token,
                usage,
                outcome: self.outcome,
            });
            metrics.request_ended();
        }
    }
}
