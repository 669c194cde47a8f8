//! The demo backend built into llmux: a small OpenAI-shaped server on 127.0.0.1:0 that
//! `"target_base_url": "builtin:demo"` endpoints resolve to.
//!
//! It is a real HTTP server, not a shortcut inside the proxy, so a demo model goes through the
//! whole pipeline (admission, routing, retries, metrics, logs) like any provider. It is always
//! started: a reload may add a demo model at any time and the loader resolves `builtin:demo`
//! synchronously, and an idle actix server with one worker costs one thread and no CPU.
//!
//! Each endpoint's `demo` settings travel in its upstream URL (`settings.rs`), so the server keeps
//! no per-endpoint state; only created responses are kept, for `GET /v1/responses/{id}`.
pub mod media;
pub mod settings;
pub mod text;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::{Payload, Server};
use actix_web::http::StatusCode;
use actix_web::{web, App, FromRequest, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::demo::settings::{DemoSettings, DEMO_URL_VARIABLE};
use crate::startup::EnvSource;

/// Largest request body the demo reads (llmux bounds what it forwards itself).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The running demo server: its base URL and the server future (it serves once polled).
pub struct DemoServer {
    pub url: String,
    pub server: Server,
}

/// Binds 127.0.0.1:0 and builds the demo server with one worker.
pub fn start() -> std::io::Result<DemoServer> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let responses = web::Data::new(text::StoredResponses::default());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(responses.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .configure(routes)
            .service(web::scope("/s/{settings}").configure(routes))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(DemoServer { url, server })
}

/// `env` plus [`DEMO_URL_VARIABLE`] answering `demo_url`: how the loader learns where
/// `builtin:demo` is without a parameter of its own.
pub fn env_with_demo_url(env: EnvSource, demo_url: String) -> EnvSource {
    Arc::new(move |name: &str| {
        if name == DEMO_URL_VARIABLE {
            Some(demo_url.clone())
        } else {
            env(name)
        }
    })
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/v1/chat/completions", web::post().to(text::chat))
        .route("/v1/completions", web::post().to(text::completions))
        .route("/v1/responses", web::post().to(text::responses))
        .route("/v1/responses/{id}", web::get().to(text::retrieve_response))
        .route(
            "/v1/responses/{id}",
            web::delete().to(text::delete_response),
        )
        .route("/v1/moderations", web::post().to(text::moderations))
        .route("/v1/embeddings", web::post().to(media::embeddings))
        .route("/v1/images/generations", web::post().to(media::images))
        .route("/images/demo.png", web::get().to(media::png))
        .route("/v1/audio/speech", web::post().to(media::speech))
        .route(
            "/v1/audio/transcriptions",
            web::post().to(|request, body, settings| {
                media::transcribe(media::Task::Transcribe, request, body, settings)
            }),
        )
        .route(
            "/v1/audio/translations",
            web::post().to(|request, body, settings| {
                media::transcribe(media::Task::Translate, request, body, settings)
            }),
        );
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "the demo backend has no {} {}",
            request.method(),
            request.path()
        ),
        "invalid_request_error",
        "unknown_url",
    )
}

/// The settings of the endpoint a request came from, read from the `/s/{settings}` prefix.
pub struct Settings(pub DemoSettings);

impl FromRequest for Settings {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let settings = request
            .match_info()
            .get("settings")
            .map(DemoSettings::from_segment)
            .unwrap_or_default();
        std::future::ready(Ok(Self(settings)))
    }
}

impl Settings {
    /// Waits `latency_ms`, then rolls the injected faults: `Some` answer replaces the real one.
    pub async fn faults(&self) -> Option<HttpResponse> {
        let settings = &self.0;
        if !settings.latency.is_zero() {
            actix_web::rt::time::sleep(settings.latency).await;
        }
        if settings.error_rate == 0.0 && settings.rate_limit_rate == 0.0 {
            return None;
        }
        let roll = fastrand::f64();
        if roll < settings.error_rate {
            return Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The demo backend failed this request on purpose (its error_rate).",
                "server_error",
                "demo_injected_error",
            ));
        }
        if roll < settings.error_rate + settings.rate_limit_rate {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached: the demo backend refused this request on purpose (its rate_limit_rate).",
                "requests",
                "rate_limit_exceeded",
            );
            if let Ok(value) = settings.retry_after.to_string().parse() {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, value);
            }
            return Some(response);
        }
        None
    }
}

/// An answer in OpenAI's error shape.
pub fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// Parses a JSON body; the error is the message of the 400 to answer ([`invalid_request`]).
pub fn json_body(body: &Bytes) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("the request body must be a JSON object".to_owned()),
        Err(cause) => Err(format!("the request body is not valid JSON: {cause}")),
    }
}

pub fn invalid_request(message: &str) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        "invalid_request",
    )
}

/// Seconds since the epoch, as OpenAI's `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// `prefix` plus 24 random alphanumerics, like OpenAI's ids.
pub fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// A rough token count of some text (about four characters a token, as OpenAI's guidance says):
/// the demo has no tokenizer and needs none.
pub fn estimate_tokens(text_chars: usize) -> u64 {
    (text_chars as u64).div_ceil(4).max(1)
}

/// The `model` of a request, echoed back as the upstream's model name.
pub fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo")
        .to_owned()
}
