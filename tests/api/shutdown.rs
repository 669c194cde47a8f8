//! The binary: graceful drain on SIGTERM, and `llmux healthcheck` exit codes.
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::{provider_file, spawn_app, Binary, MockUpstream, Reply};

/// Starts `llmux serve` on a free port with `dir` as config dir and the given shutdown grace.
async fn start_binary(dir: &std::path::Path, grace_seconds: u32) -> Binary {
    start_binary_with_drain_delay(dir, grace_seconds, "0").await
}

async fn start_binary_with_drain_delay(
    dir: &std::path::Path,
    grace_seconds: u32,
    drain_delay: &str,
) -> Binary {
    let grace = grace_seconds.to_string();
    Binary::start(
        dir,
        &[],
        &[
            ("LLMUX_SHUTDOWN_GRACE", &grace),
            ("LLMUX_DRAIN_DELAY", drain_delay),
            ("TEST_PROVIDER_KEY", "sk-binary"),
        ],
    )
    .await
}

fn send_sigterm(child: &Child) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn events(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"t",
                "choices":[{"index":0,"delta":{"content":format!("{i} ")},"finish_reason":null}]})
            .to_string()
        })
        .collect()
}

#[tokio::test]
async fn sigterm_lets_a_slow_stream_finish_refuses_new_connections_and_exits_0() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Sse {
        events: events(8),
        gap: Duration::from_millis(300),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        provider_file("mock", "", &[("m", "t")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    let Binary {
        mut child,
        port,
        lines,
    } = start_binary(dir.path(), 20).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    received.push_str(std::str::from_utf8(&first).unwrap());

    let signalled = Instant::now();
    send_sigterm(&child);

    // New connections are refused once the listener is closed (polled: the signal is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("llmux still accepts connections 5s after SIGTERM"),
        }
    }
    // The stream in flight completes.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no chunk for 10 s after {received:?}; llmux logged {:#?}",
                lines.lock().unwrap()
            )
        })
    {
        received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(received.matches("data: ").count(), 9, "{received}");
    assert!(received.ends_with("data: [DONE]\n\n"), "{received}");
    drop(body);
    drop(http);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("llmux exits well before its 20s grace")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(18),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(upstream.streams_finished(), 1);
}

#[tokio::test]
async fn sigterm_turns_ready_to_503_and_keeps_serving_new_connections_for_the_drain_delay() {
    // Issue 20: the listener closed at once, so connections Kubernetes still sent were refused.
    let dir = tempfile::tempdir().unwrap();
    let file = provider_file("mock", "", &[("m", "t")]).to_string();
    std::fs::write(
        dir.path().join("p.json"),
        file.replace("{UPSTREAM}", "http://127.0.0.1:9"),
    )
    .unwrap();
    let Binary {
        mut child, port, ..
    } = start_binary_with_drain_delay(dir.path(), 10, "2").await;
    let get = |path: &'static str| async move {
        // A new client each time: a new connection, not a kept-alive one.
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(get("/ready").await.unwrap(), 200);

    let signalled = Instant::now();
    send_sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(1);
    while get("/ready").await.unwrap() != 503 {
        assert!(
            Instant::now() < deadline,
            "/ready still 200 1 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Inside the drain delay: new connections are served.
    assert_eq!(get("/health").await.unwrap(), 200);
    assert!(
        signalled.elapsed() < Duration::from_millis(1800),
        "{:?}",
        signalled.elapsed()
    );

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("llmux exits after the drain delay")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    assert!(get("/health").await.is_err());
}

#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Sse {
        events: events(100),
        gap: Duration::from_millis(300),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        provider_file("mock", "", &[("m", "t")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    let Binary {
        mut child, port, ..
    } = start_binary(dir.path(), 60).await;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    send_sigterm(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_sigterm(&child);

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("llmux exits soon after the second signal")
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

async fn healthcheck(port: u16) -> Option<i32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["healthcheck", "--port", &port.to_string()])
        .env_remove("LLMUX_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("healthcheck ends within its timeout")
        .unwrap()
        .code()
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_live_llmux_and_1_when_nothing_listens() {
    let app = spawn_app().await;
    assert_eq!(healthcheck(app.port).await, Some(0));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port();
    drop(listener);
    assert_eq!(healthcheck(closed).await, Some(1));
}

#[tokio::test]
async fn healthcheck_exits_1_when_health_is_not_200() {
    let upstream = MockUpstream::start().await;
    upstream.always(Reply::json(503, json!({"status": "down"})));
    let port: u16 = upstream.url.rsplit(':').next().unwrap().parse().unwrap();

    assert_eq!(healthcheck(port).await, Some(1));
}

/// The store writes admission's usage once a second: what a key used in the last second before a
/// SIGTERM is written on the way out, so a restart does not give those requests back to the key.
#[tokio::test]
async fn sigterm_writes_the_usage_the_store_has_not_written_yet() {
    use llmux::store::records::WindowType;
    use llmux::store::{Store, StoreLocation, StoreTimings, WhenUnreachable};

    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        provider_file("mock", "", &[("m", "t")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let Binary {
        mut child, port, ..
    } = Binary::start(
        dir.path(),
        &["--watch", "off", "--data-dir", data_dir.to_str().unwrap()],
        &[
            ("LLMUX_ADMIN_TOKEN", crate::admin_api::ADMIN_TOKEN),
            ("LLMUX_DRAIN_DELAY", "0"),
            ("TEST_PROVIDER_KEY", "sk-binary"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("http://127.0.0.1:{port}/api/admin/keys"))
        .bearer_auth(crate::admin_api::ADMIN_TOKEN)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    // The key table takes the database's keys within the store's poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    let chat = || {
        http.post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "m", "messages": []}))
            .send()
    };
    while chat().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the new key never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Three more at once, then the signal: well inside the store's one-second batch.
    for _ in 0..3 {
        assert_eq!(chat().await.unwrap().status(), 200);
    }
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    send_sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("llmux exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    let store = Store::open(
        StoreLocation::Sqlite { data_dir },
        StoreTimings::default(),
        WhenUnreachable::Fail,
    )
    .unwrap();
    let counted = store
        .usage(
            format!("key:{id}"),
            WindowType::Day,
            i64::try_from(at).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        counted.requests, 4,
        "every admitted request is in the store"
    );
}
