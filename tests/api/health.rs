//! GET /health/{model}: probes, statuses, health_path, cache and coalescing; GET /ready.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llmux::cli::ServeArgs;
use llmux::startup::Application;
use serde_json::{json, Value};

use crate::helpers::{
    assert_openai_error, provider_file, spawn_app, MockUpstream, Reply, Spawn, PROVIDER_KEY,
};

/// A URL where nothing listens: a port bound, then closed.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// One provider with model `m` whose chat endpoints go to each of `bases`, with the given extra keys.
fn model_at(bases: &[(&str, Value)]) -> Value {
    let endpoints: Vec<Value> = bases
        .iter()
        .map(|(base, extra)| {
            let mut endpoint = json!({"path": "v1/chat/completions", "target_model_name": "t", "target_base_url": base});
            for (key, value) in extra.as_object().unwrap() {
                endpoint[key] = value.clone();
            }
            endpoint
        })
        .collect();
    json!({"mock": {"api_key_variable": "TEST_PROVIDER_KEY", "health_timeout": 2,
        "models": {"m": {"endpoints": endpoints}}}})
}

async fn get_health(app: &crate::helpers::TestApp, model: &str) -> (u16, Value) {
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        app.http.get(app.url(&format!("/health/{model}"))).send(),
    )
    .await
    .expect("health answers within 20s")
    .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(!text.contains(PROVIDER_KEY), "{text}");
    (status, serde_json::from_str(&text).unwrap())
}

fn health_requests(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.uri == "/health")
        .count()
}

#[tokio::test]
async fn a_model_whose_backend_is_up_is_ok_and_its_url_is_probed_once() {
    let app = spawn_app().await;

    let (status, body) = get_health(&app, "m").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["model"], "m");
    let endpoints = body["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 4, "{body}");
    for endpoint in endpoints {
        assert_eq!(endpoint["status"], "up", "{body}");
        assert_eq!(endpoint["provider"], "mock");
        assert_eq!(endpoint["url"], format!("{}/health", app.upstream.url));
        assert!(endpoint["latency_ms"].is_u64(), "{body}");
        assert!(endpoint["error"].is_null(), "{body}");
    }
    assert_eq!(endpoints[0]["path"], "v1/chat/completions");
    // Four endpoints share one base URL: one upstream request.
    assert_eq!(health_requests(&app.upstream), 1);
    let probe = app.upstream.last_request();
    assert_eq!(probe.method, "GET");
    assert_eq!(
        probe.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
}

#[tokio::test]
async fn up_down_slow_and_500_backends_make_the_model_degraded() {
    let up = MockUpstream::start().await;
    let slow = MockUpstream::start().await;
    slow.always(Reply::Stall(Duration::from_secs(10)));
    let failing = MockUpstream::start().await;
    failing.always(Reply::json(500, json!({"error": "boom"})));
    let down = closed_port_url();
    let file = model_at(&[
        (&up.url, json!({})),
        (&down, json!({})),
        (&slow.url, json!({"health_timeout": 0.5})),
        (&failing.url, json!({})),
    ]);
    let app = Spawn::new().file("p.json", file).start_with(up).await;

    let started = Instant::now();
    let (status, body) = get_health(&app, "m").await;

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "probes run concurrently within their timeouts"
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded");
    let endpoints = &body["endpoints"];
    let statuses: Vec<&str> = (0..4)
        .map(|i| endpoints[i]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["up", "down", "down", "down"], "{body}");
    assert!(
        endpoints[1]["error"].as_str().unwrap().contains("connect"),
        "{body}"
    );
    assert!(
        endpoints[2]["error"]
            .as_str()
            .unwrap()
            .contains("health_timeout of 0.5s"),
        "{body}"
    );
    assert!(
        endpoints[3]["error"].as_str().unwrap().contains("HTTP 500"),
        "{body}"
    );
    assert_eq!(endpoints[3]["url"], format!("{}/health", failing.url));
}

#[tokio::test]
async fn a_model_with_no_endpoint_up_answers_503_error() {
    let failing = MockUpstream::start().await;
    failing.always(Reply::json(503, json!({"status": "loading"})));
    let file = model_at(&[(&closed_port_url(), json!({})), (&failing.url, json!({}))]);
    let app = Spawn::new().file("p.json", file).start().await;

    let (status, body) = get_health(&app, "m").await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(body["endpoints"][0]["status"], "down");
    assert_eq!(body["endpoints"][1]["status"], "down");
}

#[tokio::test]
async fn health_path_picks_the_probed_url_and_null_leaves_the_endpoint_unchecked() {
    let upstream = MockUpstream::start().await;
    let file = json!({"mock": {"api_key_variable": "TEST_PROVIDER_KEY", "target_base_url": "{UPSTREAM}",
        "health_path": "v1/models", "models": {
        "org/probed": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"},
            {"path": "v1/embeddings", "target_model_name": "t", "health_path": null}]},
        "quiet": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t", "health_path": null}]}}}});
    let app = Spawn::new().file("p.json", file).start_with(upstream).await;

    let (status, quiet) = get_health(&app, "quiet").await;
    assert_eq!(status, 200, "{quiet}");
    assert_eq!(quiet["status"], "ok");
    assert_eq!(quiet["endpoints"][0]["status"], "unchecked");
    assert!(quiet["endpoints"][0]["latency_ms"].is_null());
    assert_eq!(quiet["endpoints"][0]["url"], app.upstream.url);
    assert!(
        app.upstream.requests().is_empty(),
        "an unchecked endpoint is never probed"
    );

    let (status, probed) = get_health(&app, "org/probed").await;
    assert_eq!(status, 200, "{probed}");
    assert_eq!(probed["model"], "org/probed");
    assert_eq!(probed["status"], "ok");
    assert_eq!(probed["endpoints"][0]["status"], "up");
    assert_eq!(probed["endpoints"][1]["status"], "unchecked");
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].uri, "/v1/models");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
}

#[tokio::test]
async fn health_of_an_unknown_model_is_a_404_naming_it() {
    let app = spawn_app().await;

    let response = app
        .http
        .get(app.url("/health/org/nope"))
        .send()
        .await
        .unwrap();

    let error = assert_openai_error(response, 404).await;
    assert!(
        error["message"].as_str().unwrap().contains("`org/nope`"),
        "{error}"
    );
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn probe_results_are_reused_within_the_cache_ttl_then_probed_again() {
    let app = Spawn::new()
        .file("p.json", provider_file("mock", "", &[("m", "t")]))
        .args(|args| args.health_cache_ttl = Duration::from_secs(1))
        .start()
        .await;

    get_health(&app, "m").await;
    get_health(&app, "m").await;
    assert_eq!(
        health_requests(&app.upstream),
        1,
        "the second check is served from the cache"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    get_health(&app, "m").await;
    assert_eq!(
        health_requests(&app.upstream),
        2,
        "after the TTL the URL is probed again"
    );
}

#[tokio::test]
async fn concurrent_checks_of_one_url_share_one_upstream_request() {
    let app = spawn_app().await;
    // A slow probe, so every check arrives while it is in flight.
    app.upstream.push(Reply::Stall(Duration::from_millis(800)));

    let checks = (0..20).map(|_| get_health(&app, "m"));
    let answers = futures_util::future::join_all(checks).await;

    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok");
    }
    assert_eq!(health_requests(&app.upstream), 1);
}

#[tokio::test]
async fn ready_is_503_without_routes_and_200_with_them() {
    let empty = Spawn::new().start().await;
    let response = empty.http.get(empty.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("no routes"),
        "{body}"
    );

    let app = spawn_app().await;
    let response = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["routes"], 4);
}

#[tokio::test]
async fn ready_is_503_while_shutting_down_and_liveness_stays_200() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        provider_file("mock", "", &[("m", "t")])
            .to_string()
            .replace("{UPSTREAM}", &closed_port_url()),
    )
    .unwrap();
    let mut args = ServeArgs::new(dir.path());
    args.workers = Some(1);
    let application = Application::build(args).unwrap();
    let address = format!("http://127.0.0.1:{}", application.port());
    let state = application.state();
    tokio::spawn(application.run_until_stopped());
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{address}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    state.shutting_down.store(true, Ordering::Release);

    let response = http.get(format!("{address}/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "shutting down");
    assert_eq!(
        http.get(format!("{address}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn head_health_answers_200_for_load_balancers() {
    // Issue 12: HEAD /health was a 405.
    let app = spawn_app().await;

    let response = app.http.head(app.url("/health")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
}
