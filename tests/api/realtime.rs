//! Realtime over WebSocket (issue 15): a real WebSocket client (tokio-tungstenite) through llmux to
//! an in-process WebSocket upstream.
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{Spawn, TestApp, PROVIDER_KEY};
use crate::ws_mock::{audio_frame, WsMock};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Provider `rt` serving `m` (target `target-m`) and `refusing` (target `refused-target`) on
/// v1/realtime at `url`.
pub fn realtime_provider(url: &str) -> Value {
    json!({"rt": {
        "api_key_variable": "TEST_PROVIDER_KEY",
        "target_base_url": url,
        "request_timeout": 5,
        "models": {
            "m": {"endpoints": [{"path": "v1/realtime", "target_model_name": "target-m"}]},
            "refusing": {"endpoints": [{"path": "v1/realtime", "target_model_name": "refused-target"}]},
            "chat-only": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "c"}]}
        }
    }})
}

async fn spawn_realtime(mock: &WsMock) -> TestApp {
    Spawn::new()
        .file("rt.json", realtime_provider(&mock.url))
        .start()
        .await
}

/// Opens `/v1/realtime?model=…` on `port`, with extra handshake headers.
async fn connect(
    port: u16,
    model: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = format!("ws://127.0.0.1:{port}/v1/realtime?model={model}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("the handshake finishes within 10s")
}

/// The next frame, at most 5 s away.
async fn next(client: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("a frame within 5s")
        .expect("the socket is open")
        .expect("a valid frame")
}

fn text_event(index: usize) -> String {
    json!({"type": "input_audio_buffer.append", "seq": index}).to_string()
}

#[tokio::test]
async fn interleaved_audio_and_text_frames_pass_both_ways_in_order_one_by_one() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;
    let (mut client, _) = connect(app.port, "m", &[("authorization", "Bearer sk-client")])
        .await
        .unwrap();

    // Lockstep: each frame must come back before the next is sent, so a relay that held frames
    // back (for a batch, a timer or a buffer to fill) would stall here.
    let mut sent = Vec::new();
    for index in 0..40 {
        let message = match index % 2 {
            0 => Message::binary(audio_frame(index)),
            _ => Message::text(text_event(index)),
        };
        sent.push(message.clone());
        client.send(message.clone()).await.unwrap();
        assert_eq!(
            next(&mut client).await,
            message,
            "frame {index} echoed as sent"
        );
    }
    let received: Vec<Message> = mock
        .frames()
        .into_iter()
        .map(|(kind, bytes)| match kind {
            "binary" => Message::binary(bytes),
            _ => Message::text(String::from_utf8(bytes).unwrap()),
        })
        .collect();
    assert_eq!(received, sent, "the upstream got every frame, in order");

    // The upstream streams 20 frames 25 ms apart: they arrive as spaced as they were sent.
    client.send(Message::text("stream:20:25")).await.unwrap();
    let mut arrivals = Vec::new();
    for index in 0..20 {
        let frame = next(&mut client).await;
        arrivals.push(Instant::now());
        match index % 2 {
            0 => assert_eq!(frame, Message::binary(audio_frame(index))),
            _ => assert_eq!(
                frame.into_text().unwrap().as_str(),
                json!({"type": "response.audio_transcript.delta", "seq": index}).to_string()
            ),
        }
    }
    let spread = arrivals[19] - arrivals[0];
    // 19 gaps of 25 ms were slept upstream: bunched frames would arrive within a few ms.
    assert!(
        spread >= Duration::from_millis(19 * 25 / 2),
        "frames bunched: {spread:?}"
    );
    let bunched = arrivals
        .windows(2)
        .filter(|w| w[1] - w[0] < Duration::from_millis(3))
        .count();
    assert!(
        bunched <= 4,
        "{bunched} of 19 frames arrived less than 3 ms after the previous one"
    );
}

#[tokio::test]
async fn the_client_key_stays_here_and_the_provider_key_and_target_model_go_upstream() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;
    let (mut client, response) = connect(
        app.port,
        "m",
        &[
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.sk-client-browser, openai-beta.realtime-v1",
            ),
            ("openai-beta", "realtime=v1"),
            ("cookie", "session=client-cookie"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("hello"));

    let (uri, headers) = mock.handshakes().remove(0);
    assert_eq!(uri, "/v1/realtime?model=target-m");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("authorization"),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(offered, ["realtime", "openai-beta.realtime-v1"]);
    assert_eq!(header("openai-beta"), Some("realtime=v1"));
    assert!(header("x-request-id").is_some());
    assert_eq!(header("cookie"), None);
    assert!(
        headers.iter().all(|(_, v)| !v.contains("sk-client")),
        "the client's key went upstream: {headers:?}"
    );
}

#[tokio::test]
async fn a_close_from_the_client_reaches_the_upstream_with_its_code_and_reason() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;
    let (mut client, _) = connect(app.port, "m", &[]).await.unwrap();
    client.send(Message::text("hi")).await.unwrap();
    next(&mut client).await;

    client
        .close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "user hung up".into(),
        }))
        .await
        .unwrap();
    // The close is answered with the same code.
    match next(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected a close, got {other:?}"),
    }
    mock.wait_for("the upstream close", |m| !m.closes().is_empty())
        .await;
    assert_eq!(mock.closes(), [(4000, "user hung up".to_owned())]);

    // The session is counted once it ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("llmux_realtime_sessions_total{ended_by=\"client\"} 1") {
            assert!(
                metrics.contains(
                    "llmux_realtime_frames_total{direction=\"client_to_upstream\",kind=\"text\"} 1"
                ),
                "{metrics}"
            );
            assert!(
                metrics.contains("llmux_realtime_bytes_total{direction=\"upstream_to_client\"} 2"),
                "{metrics}"
            );
            assert!(
                metrics.contains("llmux_realtime_sessions_active 0"),
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no session in the metrics: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_close_from_the_upstream_reaches_the_client_with_its_code_and_reason() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;
    let (mut client, _) = connect(app.port, "m", &[]).await.unwrap();

    client.send(Message::text("close-me")).await.unwrap();

    match next(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "done");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    mock.wait_for("the upstream session to end", |m| m.ended() == 1)
        .await;
}

#[tokio::test]
async fn an_upstream_refusing_the_handshake_is_an_openai_error_before_the_upgrade() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;

    let refused = connect(app.port, "refusing", &[]).await.unwrap_err();

    let WsError::Http(response) = refused else {
        panic!("expected an HTTP answer, got {refused:?}");
    };
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_refused_session", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("rt"),
        "{body}"
    );
    assert_eq!(mock.opened(), 0);
}

#[tokio::test]
async fn bad_realtime_requests_get_openai_errors() {
    let mock = WsMock::start().await;
    let app = spawn_realtime(&mock).await;
    let status_of = |error: WsError| match error {
        WsError::Http(response) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert!(body["error"]["message"].is_string(), "{body}");
            response.status().as_u16()
        }
        other => panic!("expected an HTTP answer, got {other:?}"),
    };
    assert_eq!(
        status_of(connect(app.port, "nope", &[]).await.unwrap_err()),
        404
    );
    assert_eq!(
        status_of(connect(app.port, "chat-only", &[]).await.unwrap_err()),
        404
    );
    assert_eq!(
        status_of(connect(app.port, "", &[]).await.unwrap_err()),
        400
    );
    // A plain GET is not an upgrade.
    let plain = app
        .http
        .get(app.url("/v1/realtime?model=m"))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_openai_error(plain, 400).await;
    assert!(mock.handshakes().is_empty(), "no upstream was bothered");

    // An upstream that is not there: 502 naming the provider.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let app = Spawn::new()
        .file("rt.json", realtime_provider(&dead))
        .args(|args| args.eject_after = 1)
        .start()
        .await;
    assert_eq!(
        status_of(connect(app.port, "m", &[]).await.unwrap_err()),
        502
    );
    // The failed handshake counted against the member, as a failed attempt does.
    let health: Value = app
        .http
        .get(app.url("/health/m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["endpoints"][0]["ejected"], true, "{health}");
}

#[tokio::test]
async fn pings_are_answered_and_an_idle_session_is_closed() {
    let mock = WsMock::start().await;
    let app = Spawn::new()
        .file("rt.json", realtime_provider(&mock.url))
        .args(|args| args.realtime_idle_timeout = Duration::from_millis(600))
        .start()
        .await;
    let (mut client, _) = connect(app.port, "m", &[]).await.unwrap();

    client
        .send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::Pong("are you there".into())
    );
    // llmux answers the ping itself: each leg is its own connection.
    assert!(mock.frames().is_empty());

    let started = Instant::now();
    match next(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1000);
            assert_eq!(frame.reason.as_str(), "idle timeout");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        started.elapsed()
    );
    mock.wait_for("the upstream close", |m| !m.closes().is_empty())
        .await;
    assert_eq!(mock.closes(), [(1000, "idle timeout".to_owned())]);
}

#[tokio::test]
async fn a_wss_upstream_behind_a_private_ca_and_the_egress_proxy_relays_frames() {
    let pki = crate::tls_mock::TestPki::new("realtime");
    let mock = WsMock::start_tls(&pki.server("realtime-backend")).await;
    let proxy = crate::tls_mock::ConnectProxy::start().await;
    let mut config = realtime_provider(&mock.url);
    config["rt"]["tls"] = json!({"ca_file": pki.ca_file});
    let app = Spawn::new()
        .file("rt.json", config)
        .env("HTTPS_PROXY", &proxy.url)
        .start()
        .await;
    let (mut client, _) = connect(app.port, "m", &[]).await.unwrap();

    for index in 0..6 {
        let message = match index % 2 {
            0 => Message::binary(audio_frame(index)),
            _ => Message::text(text_event(index)),
        };
        client.send(message.clone()).await.unwrap();
        assert_eq!(next(&mut client).await, message);
    }
    // The WebSocket offered HTTP/1.1 only (none opens over h2) and went through one tunnel.
    assert_eq!(proxy.tunnels(), 1);
    assert_eq!(mock.handshakes()[0].0, "/v1/realtime?model=target-m");
}

/// Starts the `llmux` binary on a free port with `dir` as config dir; returns it and its port,
/// read from the "llmux listening" log line.
async fn start_binary(
    dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmux"));
    command
        .args(["--port", "0", "--workers", "1", "--config-dir"])
        .arg(dir)
        .env("TEST_PROVIDER_KEY", PROVIDER_KEY)
        .env("LLMUX_LOG", "warn,llmux::startup=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(log) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if log["msg"]
                .as_str()
                .is_some_and(|m| m.contains("llmux listening"))
            {
                return log["port"].as_u64().unwrap() as u16;
            }
        }
        panic!("llmux exited before listening");
    })
    .await
    .expect("llmux listens within 20s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

fn config_dir_for(mock: &WsMock) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rt.json"),
        realtime_provider(&mock.url).to_string(),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn sigterm_closes_open_sessions_with_1001_when_the_grace_ends() {
    let mock = WsMock::start().await;
    let dir = config_dir_for(&mock);
    let (mut child, port) = start_binary(
        dir.path(),
        &[("LLMUX_SHUTDOWN_GRACE", "2"), ("LLMUX_DRAIN_DELAY", "0")],
    )
    .await;
    let (mut client, _) = connect(port, "m", &[]).await.unwrap();
    client.send(Message::text("hi")).await.unwrap();
    next(&mut client).await;

    let pid = child.id().unwrap();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());

    // The session keeps working during the grace…
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("still here"));
    // …and is closed with 1001 before it ends (2 s grace: at 1.5 s).
    match next(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "server shutting down");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1200) && closed_after < Duration::from_millis(2500),
        "{closed_after:?}"
    );
    mock.wait_for("the upstream close", |m| !m.closes().is_empty())
        .await;
    assert_eq!(mock.closes(), [(1001, "server shutting down".to_owned())]);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("llmux exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Resident memory of a process, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn five_hundred_concurrent_sessions_stay_within_bounded_memory() {
    const SESSIONS: usize = 500;
    let mock = WsMock::start().await;
    let dir = config_dir_for(&mock);
    let (child, port) = start_binary(dir.path(), &[]).await;
    let pid = child.id().unwrap();
    // One session first, so what is measured is the cost of sessions, not of the first one.
    let (mut warm, _) = connect(port, "m", &[]).await.unwrap();
    warm.send(Message::binary(audio_frame(0))).await.unwrap();
    next(&mut warm).await;
    let before = rss_of(pid);

    let started = Instant::now();
    let mut clients = Vec::with_capacity(SESSIONS);
    for batch in 0..SESSIONS / 50 {
        let opened = futures_util::future::join_all((0..50).map(|i| async move {
            let (mut client, _) = connect(port, "m", &[]).await.unwrap();
            let frame = Message::binary(audio_frame(batch * 50 + i));
            client.send(frame.clone()).await.unwrap();
            assert_eq!(next(&mut client).await, frame);
            client
        }))
        .await;
        clients.extend(opened);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "opening sessions takes over 60s"
        );
    }
    mock.wait_for("every upstream session", |m| m.opened() == SESSIONS + 1)
        .await;
    let during = rss_of(pid);
    let per_session = during.saturating_sub(before) / SESSIONS as u64;
    eprintln!(
        "realtime memory: llmux RSS {:.1} MiB with 1 session, {:.1} MiB with {} ({} KiB per session); opened in {:?}",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0,
        SESSIONS + 1,
        per_session / 1024,
        started.elapsed()
    );
    // Every session still relays.
    for (index, client) in clients.iter_mut().enumerate().step_by(50) {
        client.send(Message::text(text_event(index))).await.unwrap();
        assert_eq!(next(client).await, Message::text(text_event(index)));
    }
    assert!(per_session < 256 * 1024, "{per_session} bytes per session");

    for mut client in clients {
        client.close(None).await.unwrap();
    }
    mock.wait_for("every upstream session to end", |m| m.ended() == SESSIONS)
        .await;
    drop(warm);
}

#[tokio::test]
async fn client_secrets_are_routed_on_session_model_and_forwarded_with_the_target_model() {
    let app = Spawn::new()
        .file("rt.json", realtime_provider("{UPSTREAM}"))
        .start()
        .await;
    app.upstream.push(crate::helpers::Reply::json(
        200,
        json!({"value": "ek_test", "expires_at": 1, "session": {"type": "realtime", "model": "target-m"}}),
    ));
    let body = r#"{"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {"type": "realtime", "model": "m", "voice": "marin"}}"#;

    let response = app
        .http
        .post(app.url("/v1/realtime/client_secrets"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client")
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["value"], "ek_test");
    let upstream = app.upstream.last_request();
    assert_eq!(upstream.uri, "/v1/realtime/client_secrets");
    assert_eq!(
        upstream.header("authorization"),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    // Only session.model changed, byte for byte.
    assert_eq!(
        std::str::from_utf8(&upstream.body).unwrap(),
        body.replace(r#""model": "m""#, r#""model": "target-m""#)
    );

    let missing = app
        .post_json(
            "/v1/realtime/client_secrets",
            json!({"session": {"type": "realtime"}}),
        )
        .await;
    let error = crate::helpers::assert_openai_error(missing, 400).await;
    assert_eq!(error["param"], "session.model");
}

#[tokio::test]
async fn calls_send_the_sdp_offer_unchanged_and_return_the_sdp_answer() {
    let app = Spawn::new()
        .file("rt.json", realtime_provider("{UPSTREAM}"))
        .start()
        .await;
    app.upstream.push(crate::helpers::Reply::Raw {
        status: 201,
        content_type: "application/sdp".into(),
        body: "v=0\r\no=- answer\r\n".into(),
        headers: vec![("location".into(), "/v1/realtime/calls/rtc_123".into())],
    });
    let offer = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n";

    let response = app
        .http
        .post(app.url("/v1/realtime/calls?model=m"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/v1/realtime/calls/rtc_123");
    assert_eq!(response.text().await.unwrap(), "v=0\r\no=- answer\r\n");
    let upstream = app.upstream.last_request();
    assert_eq!(upstream.uri, "/v1/realtime/calls?model=target-m");
    assert_eq!(upstream.header("content-type"), Some("application/sdp"));
    assert_eq!(&upstream.body[..], offer.as_bytes());

    let no_model = app
        .http
        .post(app.url("/v1/realtime/calls"))
        .body(offer)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_openai_error(no_model, 400).await;
}
