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
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use awc::error::WsClientError;
use tokio::sync::watch;

use crate::errors::ApiError;
use crate::proxy::headers::{request_id, RequestId, X_REQUEST_ID};
use crate::routing::endpoint::Endpoint;
use crate::secret::ApiKey;
use crate::state::AppState;
use crate::upstream::UpstreamClients;
use metrics::{RealtimeMetrics, SessionLabels, CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT};
use relay::{relay, Legs};

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

/// `GET /v1/realtime?model=…` with a WebSocket upgrade.
pub async fn connect(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
    realtime: web::Data<Realtime>,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| request_id(request.headers()), |id| id.0.clone());
    match open(
        &request,
        payload,
        &state,
        &clients,
        &realtime,
        started,
        &request_id,
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => {
            let status = refusal.error.status_code().as_u16();
            realtime
                .metrics
                .sessions
                .get_or_create(&SessionLabels {
                    ended_by: "refused",
                })
                .inc();
            tracing::info!(
                request_id = request_id.to_str().unwrap_or(""),
                model = refusal.model.as_deref().unwrap_or(""),
                upstream = refusal.endpoint.as_ref().map_or("", |e| e.identity()),
                status,
                error = %refusal.error,
                took_ms = started.elapsed().as_secs_f64() * 1000.0,
                "realtime session refused"
            );
            refusal.error.error_response()
        }
    }
}

/// A refused session: the error and what was known by then, for the log line.
struct Refusal {
    error: ApiError,
    model: Option<String>,
    endpoint: Option<Arc<Endpoint>>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            model: None,
            endpoint: None,
        }
    }
}

async fn open(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    clients: &UpstreamClients,
    realtime: &Realtime,
    started: Instant,
    request_id: &HeaderValue,
) -> Result<HttpResponse, Refusal> {
    // Not an upgrade (or a malformed one): nothing to relay, and no upstream is bothered.
    actix_http::ws::verify_handshake(request.head()).map_err(|error| {
        ApiError::invalid_request(
            format!("/v1/realtime takes a WebSocket upgrade: {error}"),
            None,
        )
    })?;
    let model = model_of(request.query_string())?;
    let (credential, subprotocols) = credential_of(request.headers());
    let refuse = |error: ApiError, endpoint: Option<&Arc<Endpoint>>| Refusal {
        error,
        model: Some(model.clone()),
        endpoint: endpoint.cloned(),
    };
    // Admission (client keys) lands with the pipeline: the credential is read here, never sent on.
    let endpoint = route(state, &model).map_err(|error| refuse(error, None))?;
    let uri = upstream_uri(&endpoint).map_err(|error| refuse(error, Some(&endpoint)))?;
    let mut upstream = clients
        .websocket_for_endpoint(&endpoint)
        .ws(uri)
        .max_frame_size(MAX_FRAME_BYTES);
    for name in &FORWARDED_HEADERS {
        for value in request.headers().get_all(name) {
            upstream = upstream.header(name.clone(), value.clone());
        }
    }
    upstream = upstream.set_header(X_REQUEST_ID.clone(), request_id.clone());
    let mut extra = actix_web::http::header::HeaderMap::new();
    endpoint.apply_upstream_headers(&mut extra);
    for (name, value) in &extra {
        upstream = upstream.set_header(name.clone(), value.clone());
    }
    if !subprotocols.is_empty() {
        upstream = upstream.protocols(subprotocols.iter().map(String::as_str));
    }
    let connected = tokio::time::timeout(endpoint.request_timeout, upstream.connect()).await;
    let (upstream_response, upstream_socket) = match connected {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(refuse(handshake_error(&endpoint, error), Some(&endpoint))),
        Err(_) => {
            return Err(refuse(
                ApiError::UpstreamTimeout {
                    provider: endpoint.provider.to_string(),
                    timeout: endpoint.request_timeout,
                },
                Some(&endpoint),
            ))
        }
    };
    let (mut response, session, client_stream) =
        actix_ws::handle(request, payload).map_err(|error| {
            refuse(
                ApiError::invalid_request(error.to_string(), None),
                Some(&endpoint),
            )
        })?;
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
    let metrics = realtime.metrics.clone();
    let shutdown = realtime.shutdown.subscribe();
    let idle_timeout = realtime.settings.idle_timeout;
    let request_id = request_id.to_str().unwrap_or("").to_owned();
    let client = request.peer_addr();
    let credential_kind = match credential {
        ClientCredential::None => "none",
        ClientCredential::Authorization(_) => "authorization",
        ClientCredential::Subprotocol(_) => "subprotocol",
    };
    metrics.active.inc();
    let handshake_ms = started.elapsed().as_secs_f64() * 1000.0;
    actix_web::rt::spawn(async move {
        let opened = Instant::now();
        let ending = relay(legs, idle_timeout, shutdown).await;
        let duration = opened.elapsed();
        metrics.active.dec();
        metrics.duration.observe(duration.as_secs_f64());
        metrics
            .sessions
            .get_or_create(&SessionLabels {
                ended_by: ending.ended_by.as_str(),
            })
            .inc();
        tracing::info!(
            request_id,
            client = client.map(|c| c.to_string()).unwrap_or_default(),
            model,
            upstream = endpoint.identity(),
            credential = credential_kind,
            handshake_ms,
            duration_ms = duration.as_secs_f64() * 1000.0,
            ended_by = ending.ended_by.as_str(),
            close_code = ending.close_code,
            detail = ending.detail.as_deref(),
            frames_from_client = ending.tally.frames_from_client,
            frames_from_upstream = ending.tally.frames_from_upstream,
            bytes_from_client = ending.tally.bytes_from_client,
            bytes_from_upstream = ending.tally.bytes_from_upstream,
            "realtime session"
        );
    });
    Ok(response)
}

/// Client headers the upstream may see: the Realtime beta header and the user agent. The key,
/// cookies and the client's own handshake headers stay here.
static FORWARDED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("openai-beta"), header::USER_AGENT];

/// The `model` query parameter.
fn model_of(query: &str) -> Result<String, ApiError> {
    let model = web::Query::<ModelQuery>::from_query(query)
        .ok()
        .and_then(|q| q.into_inner().model)
        .filter(|m| !m.is_empty());
    model.ok_or_else(|| {
        ApiError::invalid_request(
            "/v1/realtime needs the model as a query parameter: /v1/realtime?model=…",
            Some("model"),
        )
    })
}

#[derive(serde::Deserialize)]
struct ModelQuery {
    model: Option<String>,
}

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

/// The endpoint of `model` on `v1/realtime`, picked by its pool.
fn route(state: &AppState, model: &str) -> Result<Arc<Endpoint>, ApiError> {
    let routes = state
        .table
        .lookup(model)
        .ok_or_else(|| ApiError::UnknownModel {
            model: model.to_owned(),
        })?;
    let pool = routes.pool(PATH).ok_or_else(|| ApiError::ModelNotOnPath {
        model: model.to_owned(),
        path: PATH.to_owned(),
        served: routes.served_paths(),
    })?;
    Ok(Arc::clone(pool.pick()))
}

/// `ws(s)://…/v1/realtime?model=<target>`: the endpoint's URL with the scheme a WebSocket takes
/// and the target model replacing the client's.
fn upstream_uri(endpoint: &Endpoint) -> Result<Uri, ApiError> {
    let query = format!("model={}", encode_query_value(&endpoint.target_model_name));
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

/// Percent-encodes a query value (model names are mostly safe; `:` `/` and spaces are not).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
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
        assert_eq!(encode_query_value("gpt-4o-realtime"), "gpt-4o-realtime");
        assert_eq!(encode_query_value("org/model:v1 x"), "org%2Fmodel%3Av1%20x");
    }
}
