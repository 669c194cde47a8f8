//! Realtime over WebSocket: `GET /v1/realtime?model=…` upgraded and relayed, frame by frame, to the
//! endpoint's `v1/realtime` upstream (ws or wss) with the provider's key and the target model.
//!
//! The upstream handshake happens before the client's upgrade is answered, so an upstream that
//! refuses (or cannot be reached) gives the client an OpenAI-shaped error, not a socket that closes.
pub mod metrics;
pub mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{StatusCode, Uri};
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::WsClientError;
use tokio::sync::watch;

use crate::errors::ApiError;
use crate::pipeline::admit::AdmitRequest;
use crate::pipeline::attempt::record_breaker;
use crate::pipeline::identify::model_of_query;
use crate::pipeline::operation::Operation;
use crate::pipeline::record::{AccessLog, Outcome};
use crate::pipeline::route;
use crate::pipeline::url_encode;
use crate::proxy::headers::X_REQUEST_ID;
use crate::routing::breaker::Verdict;
use crate::routing::endpoint::Endpoint;
use crate::secret::ApiKey;
use crate::state::AppState;
use crate::upstream::UpstreamClients;
use metrics::{RealtimeMetrics, SessionLabels, CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT};
use relay::{relay, EndedBy, Legs};

/// The OpenAI path of realtime sessions.
pub const PATH: &str = "v1/realtime";

/// The subprotocol prefix browsers use to send a key (they cannot set `Authorization`).
pub const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// Largest WebSocket frame accepted from either side: audio deltas are base64 in JSON text.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Realtime settings, a small `Copy` struct.
#[derive(Debug, Clone, Copy)]
pub struct RealtimeSettings {
    /// A session with no frame either way for this long is closed (1000, "idle timeout").
    pub idle_timeout: Duration,
}

/// The open sessions: told to close (1001) when the shutdown grace ends. Shared by every worker.
#[derive(Debug)]
pub struct Realtime {
    pub settings: RealtimeSettings,
    shutdown: watch::Sender<bool>,
    metrics: RealtimeMetrics,
}

/// The client's key as it came: for admission, never forwarded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredential {
    None,
    /// `Authorization: Bearer KEY`.
    Authorization(ApiKey),
    /// The `openai-insecure-api-key.KEY` subprotocol.
    Subprotocol(ApiKey),
}

impl Realtime {
    pub fn new(settings: RealtimeSettings, metrics: RealtimeMetrics) -> Self {
        Self {
            settings,
            shutdown: watch::Sender::new(false),
            metrics,
        }
    }

    /// Sessions open now.
    pub fn active(&self) -> i64 {
        self.metrics.active.get()
    }

    /// Closes every session with 1001 ("server shutting down"), and those that start from now on.
    pub fn close_all(&self) {
        self.shutdown.send_replace(true);
    }
}

/// `GET /v1/realtime?model=…` with a WebSocket upgrade: identify (the query's model), admit,
/// route, then the upstream handshake and the upgrade in place of attempt and respond. The
/// request's record travels with the session and is written when it ends: one line per session.
pub async fn connect(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
    realtime: web::Data<Realtime>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, Operation::Realtime, &state.metrics);
    match open(&request, payload, &state, &clients, &realtime, &mut log).await {
        Ok((response, legs)) => {
            start_session(legs, log, &realtime);
            response
        }
        Err(error) => {
            realtime
                .metrics
                .sessions
                .get_or_create(&SessionLabels {
                    ended_by: "refused",
                })
                .inc();
            log.reject(error)
        }
    }
}

async fn open(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    clients: &UpstreamClients,
    realtime: &Realtime,
    log: &mut AccessLog,
) -> Result<(HttpResponse, Legs), ApiError> {
    // Not an upgrade (or a malformed one): nothing to relay, and no upstream is bothered.
    actix_http::ws::verify_handshake(request.head()).map_err(|error| {
        ApiError::invalid_request(
            format!("/v1/realtime takes a WebSocket upgrade: {error}"),
            None,
        )
    })?;
    // identify: the model is the query's.
    let model = model_of_query(request.query_string())?;
    log.model = Some(model.as_str().into());
    // admit: a key sent as the subprotocol is shown to admission as the Authorization it stands
    // for; neither ever goes upstream.
    let (credential, subprotocols) = credential_of(request.headers());
    let admitted_headers = match &credential {
        ClientCredential::Subprotocol(key) => {
            let mut headers = request.headers().clone();
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", key.expose())) {
                headers.insert(header::AUTHORIZATION, value);
            }
            Some(headers)
        }
        _ => None,
    };
    state
        .admitter
        .admit(
            request,
            log,
            &AdmitRequest {
                operation: Operation::Realtime,
                model: &model,
                headers: admitted_headers.as_ref().unwrap_or(request.headers()),
                body: &[],
            },
        )
        .await?;
    // route: the pool of the model's v1/realtime route picks the member (no retries: a
    // session is stateful, and a refused handshake is the client's answer).
    let routed = route::route(
        &state.table,
        &*state.responses,
        Operation::Realtime,
        &model,
        None,
    )
    .await?;
    let pool = routed.pool();
    let endpoint = Arc::clone(&pool.members()[pool.select()]);
    log.endpoint = Some(Arc::clone(&endpoint));
    log.attempts = 1;
    let uri = upstream_uri(&endpoint)?;
    let mut upstream = clients
        .websocket_for_endpoint(&endpoint)
        .ws(uri)
        .max_frame_size(MAX_FRAME_BYTES);
    for name in &FORWARDED_HEADERS {
        for value in request.headers().get_all(name) {
            upstream = upstream.header(name.clone(), value.clone());
        }
    }
    upstream = upstream.set_header(X_REQUEST_ID.clone(), log.request_id.clone());
    let mut extra = actix_web::http::header::HeaderMap::new();
    endpoint.apply_upstream_headers(&mut extra);
    for (name, value) in &extra {
        upstream = upstream.set_header(name.clone(), value.clone());
    }
    if !subprotocols.is_empty() {
        upstream = upstream.protocols(subprotocols.iter().map(String::as_str));
    }
    let connected = tokio::time::timeout(endpoint.request_timeout, upstream.connect()).await;
    let connected = match connected {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(error)) => Err(handshake_error(&endpoint, error)),
        Err(_) => Err(ApiError::UpstreamTimeout {
            provider: endpoint.provider.to_string(),
            timeout: endpoint.request_timeout,
        }),
    };
    // The member's circuit breaker learns from handshakes as from attempts: unreachable, timed
    // out or a 5xx counts against it; a 429 says nothing about its health.
    let verdict = match &connected {
        Ok(_) => Verdict::Healthy,
        Err(ApiError::UpstreamRefusedSession {
            upstream_status: 429,
            ..
        }) => Verdict::Neutral,
        Err(ApiError::UpstreamRefusedSession {
            upstream_status, ..
        }) if *upstream_status >= 500 => Verdict::Failed,
        Err(ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamTimeout { .. }) => {
            Verdict::Failed
        }
        Err(_) => Verdict::Healthy,
    };
    record_breaker(pool, &endpoint, verdict, &state.retry, log);
    let (upstream_response, upstream_socket) = connected?;
    let (mut response, session, client_stream) = actix_ws::handle(request, payload)
        .map_err(|error| ApiError::invalid_request(error.to_string(), None))?;
    // The subprotocol the upstream chose, when the client offered it (never the key one).
    if let Some(chosen) = upstream_response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .filter(|chosen| {
            subprotocols
                .iter()
                .any(|offered| offered.as_bytes() == chosen.as_bytes())
        })
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, chosen.clone());
    }
    let legs = Legs {
        client: session,
        client_stream: client_stream.max_frame_size(MAX_FRAME_BYTES),
        upstream: upstream_socket,
        from_client: realtime.metrics.direction(CLIENT_TO_UPSTREAM),
        from_upstream: realtime.metrics.direction(UPSTREAM_TO_CLIENT),
    };
    Ok((response, legs))
}

/// Runs the relay on this worker; the request's record (and its admission) lives as long as the
/// session and is written when it ends: one line per session.
fn start_session(legs: Legs, mut log: AccessLog, realtime: &Realtime) {
    let metrics = realtime.metrics.clone();
    let shutdown = realtime.shutdown.subscribe();
    let idle_timeout = realtime.settings.idle_timeout;
    log.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
    log.stream = true;
    log.first_byte = Some(log.started.elapsed());
    metrics.active.inc();
    actix_web::rt::spawn(async move {
        let opened = Instant::now();
        let summary = relay(legs, idle_timeout, shutdown).await;
        metrics.active.dec();
        metrics.duration.observe(opened.elapsed().as_secs_f64());
        metrics
            .sessions
            .get_or_create(&SessionLabels {
                ended_by: summary.ended_by.as_str(),
            })
            .inc();
        log.bytes = summary.tally.bytes_from_upstream;
        log.outcome = match summary.ended_by {
            EndedBy::Error => Outcome::UpstreamBodyError,
            _ => Outcome::Ok,
        };
        log.realtime = Some(summary);
        drop(log);
    });
}

/// Client headers the upstream may see: the Realtime beta header and the user agent. The key,
/// cookies and the client's own handshake headers stay here.
static FORWARDED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("openai-beta"), header::USER_AGENT];

/// The client's key (from `Authorization` or the key subprotocol) and the other subprotocols it
/// offered, in order, which go upstream.
pub fn credential_of(
    headers: &actix_web::http::header::HeaderMap,
) -> (ClientCredential, Vec<String>) {
    let mut credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(|key| ClientCredential::Authorization(ApiKey::new(key.trim())))
        .unwrap_or(ClientCredential::None);
    let mut subprotocols = Vec::new();
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty());
    for protocol in offered {
        match protocol.strip_prefix(KEY_SUBPROTOCOL) {
            Some(key) => {
                if credential == ClientCredential::None {
                    credential = ClientCredential::Subprotocol(ApiKey::new(key));
                }
            }
            None => subprotocols.push(protocol.to_owned()),
        }
    }
    (credential, subprotocols)
}

/// `ws(s)://…/v1/realtime?model=<target>`: the endpoint's URL with the scheme a WebSocket takes
/// and the target model replacing the client's.
fn upstream_uri(endpoint: &Endpoint) -> Result<Uri, ApiError> {
    let query = format!("model={}", url_encode(&endpoint.target_model_name));
    let uri = endpoint
        .uri_with_query(PATH, Some(&query))
        .map_err(|error| ApiError::Internal(format!("the realtime URL does not parse: {error}")))?;
    let text = uri.to_string();
    let text = match text.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => match text.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => text,
        },
    };
    text.parse()
        .map_err(|error| ApiError::Internal(format!("the realtime URL does not parse: {error}")))
}

/// The upstream did not take the WebSocket: its status when it answered one (4xx/5xx passed
/// on), 502 when it could not be reached or spoke no WebSocket.
fn handshake_error(endpoint: &Endpoint, error: WsClientError) -> ApiError {
    let provider = endpoint.provider.to_string();
    match error {
        WsClientError::InvalidResponseStatus(status) => ApiError::UpstreamRefusedSession {
            provider,
            status: if status.is_client_error() || status.is_server_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            },
            upstream_status: status.as_u16(),
        },
        WsClientError::SendRequest(awc::error::SendRequestError::Timeout) => {
            ApiError::UpstreamTimeout {
                provider,
                timeout: endpoint.request_timeout,
            }
        }
        WsClientError::SendRequest(error) => ApiError::UpstreamUnreachable {
            provider,
            cause: format!(
                "cannot open a WebSocket to {}: {error}",
                endpoint.upstream_host
            ),
        },
        other => ApiError::UpstreamUnreachable {
            provider,
            cause: format!(
                "{} answered the WebSocket handshake wrongly: {other}",
                endpoint.upstream_host
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderMap;

    fn check(
        authorization: Option<&str>,
        protocols: &str,
        expected: ClientCredential,
        rest: &[&str],
    ) {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        if !protocols.is_empty() {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(protocols).unwrap(),
            );
        }
        let (credential, subprotocols) = credential_of(&headers);
        assert_eq!(credential, expected, "{authorization:?} {protocols}");
        assert_eq!(subprotocols, rest);
    }

    #[test]
    fn the_key_comes_from_authorization_or_the_subprotocol_and_never_goes_on() {
        let key = |k: &str| ApiKey::new(k);
        check(
            Some("Bearer sk-a"),
            "realtime",
            ClientCredential::Authorization(key("sk-a")),
            &["realtime"],
        );
        check(
            None,
            "realtime, openai-insecure-api-key.sk-b, openai-beta.realtime-v1",
            ClientCredential::Subprotocol(key("sk-b")),
            &["realtime", "openai-beta.realtime-v1"],
        );
        check(
            Some("Bearer sk-a"),
            "openai-insecure-api-key.sk-b",
            ClientCredential::Authorization(key("sk-a")),
            &[],
        );
        check(None, "", ClientCredential::None, &[]);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(url_encode("gpt-4o-realtime"), "gpt-4o-realtime");
        assert_eq!(url_encode("org/model:v1 x"), "org%2Fmodel%3Av1%20x");
    }
}
