//! Server limits (issue 20): header size and count, header read time, connection count.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{assert_openai_error, provider_file, Spawn, TestApp};

async fn app_with(edit: impl FnOnce(&mut llmux::cli::ServeArgs) + 'static) -> TestApp {
    Spawn::new()
        .file("p.json", provider_file("mock", "", &[("m", "t")]))
        .args(edit)
        .start()
        .await
}

#[tokio::test]
async fn a_70_kb_header_is_refused_with_431_in_the_openai_shape() {
    let app = app_with(|_| {}).await;
    let response = app
        .http
        .get(app.url("/v1/models"))
        .header("x-big", "a".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    let error = assert_openai_error(response, 431).await;
    assert_eq!(error["code"], "headers_too_large", "{error}");
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn more_headers_than_the_limit_are_refused_with_431() {
    let app = app_with(|args| args.max_headers = 10).await;
    let mut request = app.http.get(app.url("/v1/models"));
    for i in 0..12 {
        request = request.header(format!("x-h{i}"), "v");
    }
    assert_openai_error(request.send().await.unwrap(), 431).await;
    let fine = app.http.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(fine.status(), 200);
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_gets_408_and_is_closed() {
    let app = app_with(|args| args.header_read_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("llmux closes a stalled connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn at_the_connection_limit_new_connections_wait_until_one_closes() {
    let app = app_with(|args| {
        args.workers = Some(1);
        args.max_connections = 1;
        args.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let health = app.url("/health");
    // The one connection allowed, held open without a request.
    let held = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let waiting = reqwest::Client::new()
        .get(&health)
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(waiting.is_err(), "served past the limit: {waiting:?}");

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = reqwest::Client::new()
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match served {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "never served: {error}"),
        }
    }
}

/// The backlog of the socket listening on `port`, as `ss` shows it (Send-Q of a listener).
fn listen_backlog(port: u16) -> u32 {
    // iproute2's `ss`; .ci/run installs it when missing.
    let output = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss is installed (apt-get install iproute2)");
    let text = String::from_utf8(output.stdout).unwrap();
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_listener_queues_the_configured_backlog_not_stds_128() {
    // Issue 20: std's TcpListener::bind listens with a backlog of 128.
    let default = app_with(|_| {}).await;
    let configured = app_with(|args| args.backlog = 777).await;

    assert_eq!(listen_backlog(default.port), llmux::cli::DEFAULT_BACKLOG);
    assert_eq!(listen_backlog(configured.port), 777);
}

#[tokio::test]
async fn a_request_refused_for_its_headers_still_gets_its_request_id() {
    // Issue 16: the header limits moved into the accept layer; the id is still set first.
    let app = app_with(|_| {}).await;
    let response = app
        .http
        .get(app.url("/v1/models"))
        .header("x-request-id", "req-refused-head")
        .header("x-big", "a".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-refused-head");
    assert_openai_error(response, 431).await;
}

#[tokio::test]
async fn with_cors_on_the_header_limits_and_path_prefixes_still_apply_inside_it() {
    // Issue 16: with CORS origins the App has another shape (the checks inside `Cors`).
    let app = app_with(|args| {
        args.cors_origins = vec!["http://localhost:3000".into()];
        args.path_prefix = vec!["/api".into()];
    })
    .await;
    let prefixed = app
        .http
        .get(app.url("/api/v1/models"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(prefixed.status(), 200);
    assert_eq!(
        prefixed.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );

    let refused = app
        .http
        .get(app.url("/api/v1/models"))
        .header("origin", "http://localhost:3000")
        .header("x-request-id", "req-cors-refused")
        .header("x-big", "a".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(refused.headers()["x-request-id"], "req-cors-refused");
    let error = assert_openai_error(refused, 431).await;
    assert_eq!(error["code"], "headers_too_large", "{error}");
}
