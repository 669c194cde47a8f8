//! The stages for a model-less family call (files, batches, ...) and for passthrough: read the
//! body (whole when it may name ids to route by, else streamed with a byte limit), admit under
//! the family's table model (`@files`), route by the ids it names (route::family), ONE attempt
//! (creations are not idempotent and a streamed body is not kept), respond with the same header
//! hygiene and taps, remember the id a creation's answer carries, forget a deleted one.
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::BodyStream;
use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::oneshot;

use super::admit::AdmitRequest;
use super::attempt::{attempt_headers, classify, client_for, record_breaker};
use super::operation::Operation;
use super::read;
use super::record::{AccessLog, Outcome};
use super::route::{self, capture_response_id, FamilyTarget};
use crate::errors::ApiError;
use crate::proxy::forward::{respond, send, upstream_request, UpstreamResponse};
use crate::routing::endpoint::Endpoint;
use crate::routing::families::{FamilyBody, FamilyRoute, PASSTHROUGH_MODEL};
use crate::state::AppState;
use crate::upstream::UpstreamClients;

/// A call of a family route.
pub async fn forward_family(
    family_route: &'static FamilyRoute,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    let operation = Operation::Family(family_route);
    let mut log = AccessLog::of_request(&request, operation, &state.metrics);
    let model = family_route.family.table_model();
    log.model = Some(model.into());
    let prepared = async {
        read::refuse_upgrade(&request, operation)?;
        let body = match family_route.body {
            FamilyBody::Json => Body::Whole(
                read::json_body(
                    &request,
                    payload,
                    state.max_body_bytes,
                    state.client_body_timeout,
                )
                .await?,
            ),
            FamilyBody::Stream(limit) => {
                let limit = match limit {
                    0 => state.max_upload_bytes,
                    limit => limit,
                };
                Body::Streamed(Limited::start(&request, payload, limit)?)
            }
        };
        state
            .admitter
            .admit(
                &request,
                &mut log,
                &AdmitRequest {
                    operation,
                    model,
                    headers: request.headers(),
                    body: match &body {
                        Body::Whole(bytes) => bytes,
                        Body::Streamed(_) => &[],
                    },
                },
            )
            .await?;
        let path_ids: Vec<&str> = family_route
            .id_names()
            .filter_map(|name| request.match_info().get(name))
            .collect();
        if let Some(odd) = path_ids.iter().find(|id| !is_object_id(id)) {
            return Err(ApiError::invalid_request(
                format!("`{odd}` is not an object id"),
                None,
            ));
        }
        let probe = match &body {
            Body::Whole(bytes) if path_ids.is_empty() && !bytes.is_empty() => {
                serde_json::from_slice::<Value>(bytes).ok()
            }
            _ => None,
        };
        let mut target = FamilyTarget {
            ids: path_ids.clone(),
            model: probe.as_ref().and_then(|v| v.get("model")?.as_str()),
            creates: family_route.method == "POST" && path_ids.is_empty(),
        };
        if let Some(probe) = &probe {
            target
                .ids
                .extend(referenced_ids(probe, family_route.references));
        }
        let endpoint = route::family(
            &state.table,
            &*state.responses,
            family_route.family,
            &target,
        )
        .await?;
        Ok::<_, ApiError>((body, endpoint, path_ids.len()))
    }
    .await;
    let (body, endpoint, path_id_count) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return log.reject(error),
    };
    let response = attempt_once(&clients, &request, &endpoint, body, &state, log).await;
    let success = response.status().is_success();
    // A creation's answer names the new object: later calls naming its id come back here.
    if success && family_route.method == "POST" && path_id_count == 0 {
        return capture_response_id(response, &endpoint, &state.responses);
    }
    // Deleting the object the path names (not a member of it) forgets its owner.
    if success && family_route.method == "DELETE" && path_id_count == 1 {
        if let Some(id) = family_route
            .id_names()
            .next()
            .and_then(|name| request.match_info().get(name))
        {
            state
                .responses
                .forget(crate::shared::owners::IdFamily::Responses, id)
                .await;
        }
    }
    response
}

/// Any method and path under `/v1` llmux has no route for, when a provider has
/// `"passthrough": true`; `None` otherwise (the caller answers 404).
pub async fn forward_passthrough(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    clients: &UpstreamClients,
) -> Option<HttpResponse> {
    if !request.path().starts_with("/v1/") {
        return None;
    }
    // `/v1/../admin` would leave `/v1` on the upstream, with the provider's key.
    if request.path().split('/').any(is_dot_segment) {
        return None;
    }
    let endpoint = route::passthrough(&state.table)?;
    let mut log = AccessLog::of_request(request, Operation::Passthrough, &state.metrics);
    log.method = static_method(request.method());
    log.model = Some(PASSTHROUGH_MODEL.into());
    let prepared = match Limited::start(request, payload, state.max_upload_bytes) {
        Ok(body) => state
            .admitter
            .admit(
                request,
                &mut log,
                &AdmitRequest {
                    operation: Operation::Passthrough,
                    model: PASSTHROUGH_MODEL,
                    headers: request.headers(),
                    body: &[],
                },
            )
            .await
            .map(|()| body),
        Err(error) => Err(error),
    };
    let body = match prepared {
        Ok(body) => body,
        Err(error) => return Some(log.reject(error)),
    };
    Some(
        attempt_once(
            clients,
            request,
            &endpoint,
            Body::Streamed(body),
            state,
            log,
        )
        .await,
    )
}

enum Body {
    Whole(Bytes),
    Streamed(Limited),
}

/// The one attempt of a family or passthrough call: to `endpoint`, at the request's own path
/// and query, the breaker fed with its outcome.
async fn attempt_once(
    clients: &UpstreamClients,
    request: &HttpRequest,
    endpoint: &Arc<Endpoint>,
    body: Body,
    state: &AppState,
    mut log: AccessLog,
) -> HttpResponse {
    log.endpoint = Some(Arc::clone(endpoint));
    log.attempts = 1;
    let uri = match endpoint.uri_with_query(request.path(), request.uri().query()) {
        Ok(uri) => uri,
        Err(error) => return log.reject(ApiError::Internal(error.to_string())),
    };
    let client = client_for(clients, endpoint);
    let upstream = upstream_request(&client, request, endpoint, uri, &log);
    let (sent, overflow) = match body {
        Body::Whole(bytes) => (send(upstream, endpoint, bytes, &mut log).await, None),
        Body::Streamed(body) => {
            let (overflowed, limit) = (Rc::clone(&body.overflowed), body.limit);
            let (stream, done) = body.into_stream();
            // The request timeout runs from the moment the whole body is sent: a 300 MB upload
            // may take longer than an answer may.
            let upstream = upstream.timeout(NO_TIMEOUT);
            let sending = send(upstream, endpoint, BodyStream::new(stream), &mut log);
            let answered = async {
                if done.await.is_ok() {
                    tokio::time::sleep(endpoint.request_timeout).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let sent: Result<UpstreamResponse, ApiError> = tokio::select! {
                sent = sending => sent,
                () = answered => Err(ApiError::UpstreamTimeout {
                    provider: endpoint.provider.to_string(),
                    timeout: endpoint.request_timeout,
                }),
            };
            (sent, overflowed.get().then_some(limit))
        }
    };
    // A body over the limit is the client's fault, not the upstream's.
    if let (Some(limit), Err(_)) = (overflow, &sent) {
        return log.reject(ApiError::PayloadTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
    }
    let pool_of_one = crate::routing::pool::Pool::new(vec![Arc::clone(endpoint)]);
    if let Some(pool) = &pool_of_one {
        record_breaker(pool, endpoint, classify(&sent).verdict, &state.retry, &log);
    }
    let mut response = match sent {
        Ok(response) => respond(response, endpoint, log),
        Err(error) => {
            log.status = Some(error.status_code().as_u16());
            log.outcome = match error {
                ApiError::UpstreamTimeout { .. } => Outcome::UpstreamTimeout,
                _ => Outcome::UpstreamUnreachable,
            };
            error.error_response()
        }
    };
    attempt_headers(&mut response, 1, endpoint, state.upstream_header);
    response
}

/// Whether a path segment is an id OpenAI could have made (`file-abc`, `vs_1`,
/// `ft:gpt-4o-mini:org::id` checkpoints): anything else (`..`, encoded slashes) could move the
/// upstream URL off the family's path.
fn is_object_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 512
        && !is_dot_segment(id)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'))
}

/// `.` or `..`, also percent-encoded (`%2e%2E`).
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// The ids a JSON body references under `keys` (strings, or arrays of strings).
fn referenced_ids<'a>(body: &'a Value, keys: &[&str]) -> Vec<&'a str> {
    let mut ids = Vec::new();
    for key in keys {
        match body.get(key) {
            Some(Value::String(id)) => ids.push(id.as_str()),
            Some(Value::Array(items)) => ids.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    ids
}

fn static_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Long enough to never fire: streamed bodies are bounded by the request timeout once sent.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A client body streamed upstream as it arrives, refused past `limit` bytes: 413 before
/// reading when `Content-Length` announces more, else the stream fails at the limit (the
/// upstream request breaks, the client gets the 413). Memory stays at actix's chunk buffers.
struct Limited {
    payload: web::Payload,
    limit: u64,
    overflowed: Rc<Cell<bool>>,
}

impl Limited {
    fn start(request: &HttpRequest, payload: web::Payload, limit: u64) -> Result<Self, ApiError> {
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit) {
            return Err(ApiError::PayloadTooLarge {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        Ok(Self {
            payload,
            limit,
            overflowed: Rc::default(),
        })
    }

    fn into_stream(self) -> (LimitedStream, oneshot::Receiver<()>) {
        let (done, finished) = oneshot::channel();
        let stream = LimitedStream {
            payload: self.payload,
            limit: self.limit,
            read: 0,
            overflowed: self.overflowed,
            done: Some(done),
        };
        (stream, finished)
    }
}

struct LimitedStream {
    payload: web::Payload,
    limit: u64,
    read: u64,
    overflowed: Rc<Cell<bool>>,
    /// Fired once the whole body went out.
    done: Option<oneshot::Sender<()>>,
}

impl Stream for LimitedStream {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.payload).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.read += chunk.len() as u64;
                if this.read > this.limit {
                    this.overflowed.set(true);
                    return Poll::Ready(Some(Err(actix_web::error::PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    let _ = done.send(());
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_cannot_leave_their_path() {
        for id in ["file-abc", "vs_1", "ft:gpt-4o-mini:org::abc", "batch_6.1~x"] {
            assert!(is_object_id(id), "{id}");
        }
        for id in ["", ".", "..", "%2e%2E", "a%2Fb", "a b", "a?b"] {
            assert!(!is_object_id(id), "{id}");
        }
    }
}
