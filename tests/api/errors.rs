//! Everything llmux refuses itself is an OpenAI error with the right status, and never a key.
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{assert_openai_error, spawn_app, Reply, Spawn, PROVIDER_KEY};

#[tokio::test]
async fn bad_json_bodies_are_400() {
    let app = spawn_app().await;
    for body in [
        "not json",
        "{\"model\": \"m\"",
        "[1,2]",
        "",
        "{\"model\": 3}",
        "{\"messages\": []}",
    ] {
        let response = app.post_json("/v1/chat/completions", body).await;
        let error = assert_openai_error(response, 400).await;
        assert_eq!(error["type"], "invalid_request_error", "{body}");
    }
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn unknown_model_returns_404_naming_the_model() {
    let app = spawn_app().await;
    let response = app
        .post_json("/v1/chat/completions", json!({"model": "gpt-9000"}))
        .await;
    let error = assert_openai_error(response, 404).await;
    assert_eq!(error["code"], "model_not_found");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-9000") && message.contains("GET /v1/models"),
        "{message}"
    );
}

#[tokio::test]
async fn a_known_model_on_a_path_it_does_not_serve_is_404() {
    let app = spawn_app().await;
    let response = app
        .post_json("/v1/moderations", json!({"model": "m", "input": "x"}))
        .await;
    let error = assert_openai_error(response, 404).await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("/v1/moderations"));
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    let unknown = app
        .http
        .get(app.url("/v1/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_openai_error(unknown, 404).await;
    // GET lists stored chat completions (issue 14): PUT is the wrong method.
    let wrong_method = app
        .http
        .put(app.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_openai_error(wrong_method, 405).await;
    let delete_models = app.http.delete(app.url("/v1/models")).send().await.unwrap();
    assert_openai_error(delete_models, 405).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = Spawn::new()
        .file(
            "p.json",
            crate::helpers::provider_file("mock", "", &[("m", "t")]),
        )
        .args(|args| args.max_body_bytes = 1024)
        .start()
        .await;
    let big = json!({"model": "m", "input": "x".repeat(2048)});
    let response = app.post_json("/v1/embeddings", big).await;
    assert_openai_error(response, 413).await;

    // Without a content length the limit holds too.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let response = app
        .http
        .post(app.url("/v1/embeddings"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_openai_error(response, 413).await;
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn a_closed_port_is_502_naming_the_provider_never_the_key() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let file = json!({"deadprov": {"api_key_variable": "TEST_PROVIDER_KEY", "target_base_url": format!("http://127.0.0.1:{port}"),
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}});
    let app = Spawn::new().file("p.json", file).start().await;

    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;

    let error = assert_openai_error(response, 502).await;
    let text = error.to_string();
    assert!(text.contains("deadprov"), "{text}");
    assert!(!text.contains(PROVIDER_KEY), "{text}");
}

#[tokio::test]
async fn an_upstream_slower_than_request_timeout_is_504_in_time() {
    let file = json!({"slow": {"target_base_url": "{UPSTREAM}", "request_timeout": 1,
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}});
    let app = Spawn::new().file("p.json", file).start().await;
    app.upstream.push(Reply::Stall(Duration::from_secs(6)));

    let started = Instant::now();
    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;
    let elapsed = started.elapsed();

    let error = assert_openai_error(response, 504).await;
    assert!(error["message"].as_str().unwrap().contains("slow"));
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}
