//! In-process WebSocket mock of the Realtime API upstream: records handshakes and frames, echoes
//! data frames, and follows a few scripted commands sent as text.
//!
//! - model `refused-target`: the handshake is answered 403 with an OpenAI error body;
//! - text `close-me`: the mock closes with 4001 "done";
//! - text `stream:N:GAP_MS`: the mock sends N frames, binary and text alternating, GAP_MS apart;
//! - any other text or binary frame is echoed back as is.
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde_json::json;

/// A frame the mock received: `("text", bytes)`, `("binary", bytes)`, `("ping", ..)`.
pub type Received = (&'static str, Vec<u8>);

/// A handshake the mock received: path + query, and its headers.
pub type Handshake = (String, Vec<(String, String)>);

#[derive(Default)]
struct WsState {
    /// Path + query and headers of every handshake.
    handshakes: Mutex<Vec<Handshake>>,
    frames: Mutex<Vec<Received>>,
    /// Close code and reason of every close frame received.
    closes: Mutex<Vec<(u16, String)>>,
    opened: AtomicUsize,
    ended: AtomicUsize,
}

pub struct WsMock {
    /// `http://127.0.0.1:PORT` (llmux turns it into ws://).
    pub url: String,
    state: Arc<WsState>,
    handle: ServerHandle,
}

impl WsMock {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same behind TLS with `server`'s certificate (`https://…`: llmux opens `wss://`).
    pub async fn start_tls(server: &crate::tls_mock::Issued) -> Self {
        Self::start_with(Some(server)).await
    }

    async fn start_with(tls: Option<&crate::tls_mock::Issued>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(WsState::default());
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(upgrade))
        })
        .workers(1)
        .max_connections(10_000)
        .backlog(2048)
        .shutdown_timeout(0)
        .disable_signals();
        let server = match tls {
            None => server.listen(listener),
            Some(issued) => {
                server.listen_rustls_0_23(listener, crate::tls_mock::server_config(issued))
            }
        }
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.handshakes.lock().unwrap().clone()
    }

    pub fn frames(&self) -> Vec<Received> {
        self.state.frames.lock().unwrap().clone()
    }

    pub fn closes(&self) -> Vec<(u16, String)> {
        self.state.closes.lock().unwrap().clone()
    }

    pub fn opened(&self) -> usize {
        self.state.opened.load(Ordering::SeqCst)
    }

    pub fn ended(&self) -> usize {
        self.state.ended.load(Ordering::SeqCst)
    }

    /// Waits (at most 5 s) until `check` holds for the mock's state.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&WsMock) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 5s for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for WsMock {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn upgrade(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<WsState>,
) -> HttpResponse {
    state.handshakes.lock().unwrap().push((
        request.uri().to_string(),
        request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    ));
    if request.query_string().contains("model=refused-target") {
        return HttpResponse::Forbidden().json(json!({"error": {"message": "no realtime for you", "type": "invalid_request_error", "param": null, "code": null}}));
    }
    let offered_realtime = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "realtime"));
    let Ok((mut response, session, stream)) = actix_ws::handle(&request, body) else {
        return HttpResponse::BadRequest().finish();
    };
    if offered_realtime {
        response.headers_mut().insert(
            actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
            actix_web::http::header::HeaderValue::from_static("realtime"),
        );
    }
    state.opened.fetch_add(1, Ordering::SeqCst);
    let state = state.into_inner();
    actix_web::rt::spawn(serve(
        session,
        stream.max_frame_size(16 * 1024 * 1024),
        state,
    ));
    response
}

async fn serve(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    state: Arc<WsState>,
) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                state
                    .frames
                    .lock()
                    .unwrap()
                    .push(("text", text.as_bytes().to_vec()));
                if &*text == "close-me" {
                    let _ = session
                        .clone()
                        .close(Some(CloseReason {
                            code: CloseCode::Other(4001),
                            description: Some("done".into()),
                        }))
                        .await;
                    // The client's answer to our close ends the stream.
                    continue;
                }
                if let Some(script) = text.strip_prefix("stream:") {
                    let mut parts = script.split(':');
                    let count: usize = parts.next().unwrap().parse().unwrap();
                    let gap: u64 = parts.next().unwrap().parse().unwrap();
                    let mut session = session.clone();
                    actix_web::rt::spawn(async move {
                        for index in 0..count {
                            let sent = match index % 2 {
                                0 => session.binary(audio_frame(index)).await,
                                _ => session
                                    .text(json!({"type": "response.audio_transcript.delta", "seq": index}).to_string())
                                    .await,
                            };
                            if sent.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(gap)).await;
                        }
                    });
                    continue;
                }
                if session.text(text).await.is_err() {
                    break;
                }
            }
            Message::Binary(bytes) => {
                state
                    .frames
                    .lock()
                    .unwrap()
                    .push(("binary", bytes.to_vec()));
                if session.binary(bytes).await.is_err() {
                    break;
                }
            }
            Message::Ping(bytes) => {
                state.frames.lock().unwrap().push(("ping", bytes.to_vec()));
                let _ = session.pong(&bytes).await;
            }
            Message::Close(reason) => {
                let (code, description) = reason
                    .as_ref()
                    .map(|r| (u16::from(r.code), r.description.clone().unwrap_or_default()))
                    .unwrap_or((1005, String::new()));
                state.closes.lock().unwrap().push((code, description));
                let _ = session.clone().close(reason).await;
                break;
            }
            _ => {}
        }
    }
    state.ended.fetch_add(1, Ordering::SeqCst);
}

/// 100 ms of 16 kHz 16-bit mono audio: 3200 bytes, each `index` as a pattern.
pub fn audio_frame(index: usize) -> Vec<u8> {
    (0..3200).map(|i| ((i + index * 7) % 251) as u8).collect()
}
