//! In-process mock OpenAI upstream: records every request and answers from a script.
use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::{stream, FutureExt, StreamExt};
use serde_json::{json, Value};

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream received a JSON body")
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A realistic OpenAI answer for the path, echoing the model it received (SSE when the body
    /// asks for `stream: true`).
    Echo,
    /// Any status, content type and body.
    Raw {
        status: u16,
        content_type: String,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// SSE events (`data: ...` payloads), one every `gap`, then `data: [DONE]`.
    Sse { events: Vec<String>, gap: Duration },
    /// Waits this long before answering with `Echo`.
    Stall(Duration),
    /// An SSE answer that sends these events and then breaks off without `[DONE]`.
    SseThenBreak { events: Vec<String> },
    /// The handler panics (to test that the mock surfaces it).
    Panic,
    /// Any status and content type with a binary body.
    Bytes {
        status: u16,
        content_type: String,
        body: Bytes,
    },
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self::Raw {
            status,
            content_type: "application/json".into(),
            body: body.to_string(),
            headers: Vec::new(),
        }
    }
}

#[derive(Default)]
struct MockState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Option<Reply>>,
    /// SSE answers whose client (llmux) went away before the last event.
    streams_cancelled: AtomicUsize,
    streams_finished: AtomicUsize,
    /// `Stall` answers whose client (llmux) went away before the answer's head.
    stalls_cancelled: AtomicUsize,
    uploads: Mutex<Vec<Upload>>,
    /// Panics of handlers, re-raised when the mock is dropped so the test fails.
    panics: Mutex<Vec<String>>,
}

pub struct MockUpstream {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<MockState>,
    handle: ServerHandle,
}

impl MockUpstream {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Starts on a given port (0 picks one): a test revives a "dead" member on its old port.
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind mock upstream");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(MockState::default());
        let app_state = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(web::PayloadConfig::new(512 * 1024 * 1024))
                .service(web::resource("/drain/{tail:.*}").to(drain))
                .default_service(web::to(answer_or_record_panic))
        })
        .workers(1)
        // A client (llmux) that closes the connection drops the handler: `stalls_cancelled`.
        .h1_allow_half_closed(false)
        .shutdown_timeout(0)
        .disable_signals()
        .listen(listener)
        .expect("listen mock upstream")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// Answers the next request with `reply` (queued replies are used in order).
    pub fn push(&self, reply: Reply) {
        self.state.script.lock().unwrap().push_back(reply);
    }

    /// Answers every request without a queued reply with `reply`.
    pub fn always(&self, reply: Reply) {
        *self.state.default_reply.lock().unwrap() = Some(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received a request")
    }

    pub fn streams_cancelled(&self) -> usize {
        self.state.streams_cancelled.load(Ordering::SeqCst)
    }

    /// Multipart requests received under `/drain/`, parsed and hashed as they streamed in.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.uploads.lock().unwrap().clone()
    }

    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }

    /// `Stall` answers abandoned because llmux closed the connection before the answer.
    pub fn stalls_cancelled(&self) -> usize {
        self.state.stalls_cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stopping is async; the server task ends with the test's runtime either way.
        drop(handle.stop(false));
        let panics = std::mem::take(&mut *self.state.panics.lock().unwrap());
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("the mock upstream's handler panicked: {panics:?}");
        }
    }
}

/// A handler panic stays inside its actix worker: record it for `Drop` to re-raise.
async fn answer_or_record_panic(
    request: HttpRequest,
    body: Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let recorder = state.clone();
    let answered = std::panic::AssertUnwindSafe(answer(request, body, state))
        .catch_unwind()
        .await;
    answered.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        recorder.panics.lock().unwrap().push(message);
        HttpResponse::InternalServerError().body("mock handler panicked")
    })
}

async fn answer(request: HttpRequest, body: Bytes, state: web::Data<MockState>) -> HttpResponse {
    state.requests.lock().unwrap().push(Recorded {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
            .collect(),
        body: body.clone(),
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default_reply.lock().unwrap().clone())
        .unwrap_or(Reply::Echo);
    let state = state.into_inner();
    reply_with(reply, request.path(), &body, state).await
}

async fn reply_with(reply: Reply, path: &str, body: &Bytes, state: Arc<MockState>) -> HttpResponse {
    match reply {
        Reply::Echo => echo(path, body, state),
        Reply::Stall(pause) => {
            let guard = StallGuard {
                state: Arc::clone(&state),
                answered: false,
            };
            tokio::time::sleep(pause).await;
            guard.answered();
            echo(path, body, state)
        }
        Reply::Raw {
            status,
            content_type,
            body,
            headers,
        } => {
            let mut response = HttpResponse::build(
                actix_web::http::StatusCode::from_u16(status).expect("valid status"),
            );
            response.content_type(content_type);
            for (name, value) in headers {
                response.insert_header((name, value));
            }
            response.body(body)
        }
        Reply::Sse { events, gap } => sse(events, gap, state),
        Reply::Panic => panic!("scripted mock panic"),
        Reply::SseThenBreak { events } => {
            // The pause lets the head and the events go out before the connection breaks.
            let frames = stream::iter(
                events
                    .into_iter()
                    .map(|event| Ok(Bytes::from(format!("data: {event}\n\n")))),
            )
            .chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("mock breaks the stream"))
            }));
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(frames)
        }
        Reply::Bytes {
            status,
            content_type,
            body,
        } => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status).expect("valid status"),
        )
        .content_type(content_type)
        .body(body),
    }
}

fn echo(path: &str, body: &Bytes, state: Arc<MockState>) -> HttpResponse {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let streaming = request["stream"].as_bool().unwrap_or(false);
    match path {
        "/v1/chat/completions" if streaming => {
            let events = ["Hel", "lo", "!"]
                .iter()
                .map(|piece| {
                    json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1,"model":model,
                    "choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]})
                    .to_string()
                })
                .collect();
            sse(events, Duration::ZERO, state)
        }
        "/v1/chat/completions" => HttpResponse::Ok().json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        })),
        "/v1/completions" => HttpResponse::Ok().json(json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"index": 0, "text": "Hello!", "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        })),
        "/v1/embeddings" => HttpResponse::Ok().json(json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}
        })),
        _ => HttpResponse::Ok().json(json!({"path": path, "model": model})),
    }
}

/// Counts a stall as cancelled when it is dropped before it answered.
struct StallGuard {
    state: Arc<MockState>,
    answered: bool,
}

impl StallGuard {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        if !self.answered {
            self.state.stalls_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Counts a stream as cancelled when it is dropped before its last event went out.
struct StreamGuard {
    state: Arc<MockState>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = match self.finished {
            true => &self.state.streams_finished,
            false => &self.state.streams_cancelled,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

fn sse(events: Vec<String>, gap: Duration, state: Arc<MockState>) -> HttpResponse {
    let mut frames: VecDeque<Bytes> = events
        .into_iter()
        .map(|event| Bytes::from(format!("data: {event}\n\n")))
        .collect();
    frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    let guard = StreamGuard {
        state,
        finished: false,
    };
    let body = stream::unfold(
        (frames, guard, true),
        move |(mut frames, mut guard, first)| async move {
            let frame = frames.pop_front()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if frames.is_empty() {
                guard.finished = true;
            }
            Some((Ok::<_, std::io::Error>(frame), (frames, guard, false)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

/// One part of a multipart request the mock drained.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub len: u64,
    /// Hex sha256 of the part's bytes.
    pub sha256: String,
    /// The value, for parts under 4 KiB.
    pub text: Option<String>,
}

/// A multipart request under `/drain/`: never held whole, so uploads of any size fit.
#[derive(Debug, Clone)]
pub struct Upload {
    pub uri: String,
    pub content_type: String,
    pub authorization: Option<String>,
    pub parts: Vec<ReceivedPart>,
}

impl Upload {
    pub fn part(&self, name: &str) -> &ReceivedPart {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .expect("the upstream received the part")
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a multipart body as it streams in, hashing each part; answers from the script or with
/// a realistic answer for the path (`/drain` stripped).
async fn drain(
    request: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<MockState>,
) -> HttpResponse {
    use futures_util::StreamExt;
    use sha2::Digest;
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let boundary = multer::parse_boundary(&content_type).expect("the upstream body is multipart");
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let body = stream::unfold(
        receiver,
        |mut r| async move { r.recv().await.map(|c| (c, r)) },
    );
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut parts = Vec::new();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .expect("a well-formed multipart body")
    {
        let mut part = ReceivedPart {
            name: field.name().unwrap_or("").to_owned(),
            filename: field.file_name().map(str::to_owned),
            content_type: field.content_type().map(|m| m.to_string()),
            len: 0,
            sha256: String::new(),
            text: None,
        };
        let mut hasher = sha2::Sha256::new();
        let mut small = Vec::new();
        while let Some(chunk) = field.chunk().await.expect("a complete part") {
            hasher.update(&chunk);
            part.len += chunk.len() as u64;
            if small.len() < 4096 {
                small.extend_from_slice(&chunk);
            }
        }
        part.sha256 = hex(&hasher.finalize());
        if part.len < 4096 {
            part.text = String::from_utf8(small).ok();
        }
        parts.push(part);
    }
    let model = parts
        .iter()
        .find(|p| p.name == "model")
        .and_then(|p| p.text.clone())
        .unwrap_or_default();
    state.uploads.lock().unwrap().push(Upload {
        uri: request.uri().to_string(),
        content_type,
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        parts,
    });
    let scripted = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default_reply.lock().unwrap().clone());
    let path = request.path().trim_start_matches("/drain").to_owned();
    if let Some(reply) = scripted {
        return reply_with(reply, &path, &Bytes::new(), state.into_inner()).await;
    }
    match path.as_str() {
        "/v1/images/edits" | "/v1/images/variations" => HttpResponse::Ok().json(json!({
            "created": 1,
            "data": [{"url": format!("https://images.example/{model}.png")}]
        })),
        _ => HttpResponse::Ok().json(json!({"text": format!("heard by {model}")})),
    }
}
