//! The upstream call: awc request with the provider's key, the answer streamed back.
use std::sync::Arc;

use actix_web::body::{BodyStream, BoxBody, MessageBody, SizedStream};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Uri;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use awc::error::{ConnectError, SendRequestError};

use super::decode::{Coding, Decoded};
use super::headers::{copy_answer_headers, copy_request_headers, X_REQUEST_ID};
use super::stream::ResponseStream;
use super::usage::UsageReader;
use crate::errors::ApiError;
use crate::pipeline::record::{AccessLog, Outcome};
use crate::routing::endpoint::Endpoint;

/// Sends `body` to `uri` on behalf of `request` and turns the upstream's answer, whatever its
/// status, into the client's response. Only failures to get an answer at all are `ApiError`s.
pub async fn forward<B: MessageBody + 'static>(
    client: &awc::Client,
    request: &HttpRequest,
    endpoint: &Arc<Endpoint>,
    uri: Uri,
    body: B,
    log: impl Into<Box<AccessLog>>,
) -> Result<HttpResponse, ApiError> {
    let mut log = log.into();
    let upstream = upstream_request(client, request, endpoint, uri, &log);
    let response = send(upstream, endpoint, body, &mut log).await?;
    Ok(respond(response, endpoint, log))
}

/// The access-log outcome of a failure to get an answer.
pub fn failure_outcome(error: &ApiError) -> Outcome {
    match error {
        ApiError::UpstreamTimeout { .. } => Outcome::UpstreamTimeout,
        _ => Outcome::UpstreamUnreachable,
    }
}

/// The upstream request for `request`: its method, the headers that may cross, the request id
/// and the endpoint's headers and key, bounded by the endpoint's `request_timeout`. Callers may
/// still adjust headers (a new multipart boundary) or the timeout.
pub fn upstream_request(
    client: &awc::Client,
    request: &HttpRequest,
    endpoint: &Endpoint,
    uri: Uri,
    log: &AccessLog,
) -> awc::ClientRequest {
    untimed_upstream_request(client, request, endpoint, uri, log).timeout(endpoint.request_timeout)
}

/// `upstream_request` without awc's timeout: the caller bounds the wait.
fn untimed_upstream_request(
    client: &awc::Client,
    request: &HttpRequest,
    endpoint: &Endpoint,
    uri: Uri,
    log: &AccessLog,
) -> awc::ClientRequest {
    // The endpoint's `Host` when the URI is on its base URL (always, today): awc would format
    // one from the URI for every request (issue 16: 2k instructions, more than the whole copy
    // of the client's headers). h2 ignores it (`:authority` comes from the URI).
    let host = endpoint
        .host_header
        .as_ref()
        .filter(|_| uri.authority() == endpoint.upstream_uri.authority());
    // llmux reads answers (usage, rewrites) and decodes only streams: it asks for identity,
    // as awc would with `decompress` on, but with a static value instead of one built per
    // request.
    let mut upstream = client
        .request(request.method().clone(), uri)
        .no_decompress();
    let headers = upstream.headers_mut();
    copy_request_headers(request.headers(), headers);
    // Appended, not inserted: `copy_request_headers` never copies these three, and an insert
    // into actix's map costs twice an append (it moves the old values out, issue 16).
    if let Some(host) = host {
        headers.append(header::HOST, host.clone());
    }
    headers.append(header::ACCEPT_ENCODING, IDENTITY.clone());
    headers.append(X_REQUEST_ID.clone(), log.request_id.clone());
    if let Some(trace) = &log.trace {
        trace.inject(headers);
    }
    // Last: a configured `Accept-Encoding` replaces llmux's, as it did awc's (`Host` is
    // reserved: the loader refuses it).
    endpoint.apply_upstream_headers(headers);
    upstream
}

static IDENTITY: HeaderValue = HeaderValue::from_static("identity");

/// Sends the request and waits for the upstream's response head; failures are logged in `log`.
pub async fn send<B: MessageBody + 'static>(
    upstream: awc::ClientRequest,
    endpoint: &Endpoint,
    body: B,
    log: &mut AccessLog,
) -> Result<UpstreamResponse, ApiError> {
    log.upstream_begin();
    match upstream.send_body(body).await {
        Ok(response) => Ok(response),
        Err(error) => {
            log.upstream_end();
            let error = upstream_error(endpoint, error);
            log.status = Some(error.status_code().as_u16());
            log.outcome = failure_outcome(&error);
            tracing::warn!(request_id = log.request_id(), provider = %endpoint.provider, %error, "upstream request failed");
            Err(error)
        }
    }
}

/// One attempt of a retried request: sends `body` and waits, until `expires` at most, for the
/// head of the answer. Failures are the caller's to log (it decides whether another attempt
/// follows).
pub async fn attempt<B: MessageBody + 'static>(
    client: &awc::Client,
    request: &HttpRequest,
    endpoint: &Endpoint,
    uri: Uri,
    body: B,
    log: &AccessLog,
    expires: tokio::time::Instant,
) -> Result<UpstreamResponse, ApiError> {
    // The budget may be shorter than the endpoint's timeout when retries used part of it; the
    // 504 still names the configured `request_timeout` (issue 20: "within 0.999997212s").
    // tokio's timeout rather than awc's: awc boxes a timer for every request, polls it at every
    // poll of the send before the send itself, and keeps it in the answer until that drops;
    // tokio's lives in this future and is polled only while the send waits (issue 16).
    let upstream = untimed_upstream_request(client, request, endpoint, uri, log);
    match tokio::time::timeout_at(expires, upstream.send_body(body)).await {
        Ok(sent) => sent.map_err(|error| upstream_error(endpoint, error)),
        Err(_) => Err(upstream_error(endpoint, SendRequestError::Timeout)),
    }
}

/// The upstream's answer as the client's response, its body streamed through as it arrives.
/// `log` goes boxed into the body stream: pass a `Box` along when there is one (one move).
pub fn respond(
    mut response: UpstreamResponse,
    endpoint: &Endpoint,
    log: impl Into<Box<AccessLog>>,
) -> HttpResponse {
    let mut log = log.into();
    let status = response.status();
    log.status = Some(status.as_u16());
    let payload = response.take_payload();
    // The headers first, into an answer whose body comes once they told what it is.
    let mut answer = HttpResponse::with_body(status, ());
    let found = copy_answer_headers(response.headers(), answer.headers_mut());
    let event_stream = found.content_type.is_some_and(is_event_stream);
    let length = match event_stream {
        true => None,
        false => found
            .content_length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
    };
    log.stream = event_stream;
    // llmux removes the usage event it asked for: it must read the stream, so an encoded one is
    // decoded and goes out as identity.
    let strips = log
        .usage
        .as_ref()
        .is_some_and(UsageReader::strips_usage_event);
    let decode = match (event_stream && strips, found.content_encoding) {
        (true, Some(value)) => match Coding::of(value) {
            Some(coding) => Some(coding),
            None => {
                tracing::warn!(request_id = log.request_id(), provider = %endpoint.provider, encoding = ?value, "the upstream encoded a stream llmux cannot decode although asked for identity; llmux's usage event reaches the client");
                None
            }
        },
        _ => None,
    };
    let timeout = endpoint.request_timeout;
    // Built without actix's builder, as `HttpResponseBuilder::body`/`streaming` would: a
    // streamed body without a content type gets `application/octet-stream`.
    let (body, streamed) = match (&decode, length) {
        (Some(coding), _) => {
            let body = ResponseStream::new(Decoded::new(payload, *coding), timeout, log);
            (BoxBody::new(BodyStream::new(body)), true)
        }
        (None, Some(length)) => {
            let body = ResponseStream::new(payload, timeout, log);
            (BoxBody::new(SizedStream::new(length, body)), false)
        }
        (None, None) => {
            let body = ResponseStream::new(payload, timeout, log);
            (BoxBody::new(BodyStream::new(body)), true)
        }
    };
    let headers = answer.headers_mut();
    if decode.is_some() {
        headers.remove(header::CONTENT_ENCODING);
    }
    if streamed && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    answer.set_body(body)
}

/// What `send` returns: the upstream's response head with its body still to read.
pub type UpstreamResponse = awc::ClientResponse<actix_http::BoxedPayloadStream>;

pub fn is_event_stream(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .get(..17)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
}

/// Names the failing side without ever printing a key: awc errors carry no headers.
fn upstream_error(endpoint: &Endpoint, error: SendRequestError) -> ApiError {
    let provider = endpoint.provider.to_string();
    match error {
        SendRequestError::Timeout => ApiError::UpstreamTimeout {
            provider,
            timeout: endpoint.request_timeout,
        },
        SendRequestError::Connect(ConnectError::Timeout) => ApiError::UpstreamUnreachable {
            provider,
            cause: format!("connecting to {} timed out", endpoint.upstream_host),
        },
        SendRequestError::Connect(error) => ApiError::UpstreamUnreachable {
            provider,
            cause: format!("cannot connect to {}: {error}", endpoint.upstream_host),
        },
        other => ApiError::UpstreamUnreachable {
            provider,
            cause: format!("{} failed: {other}", endpoint.upstream_host),
        },
    }
}
