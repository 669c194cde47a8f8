//! Pools (issue #7): weighted round-robin, retries, Retry-After, circuit breaker, failover.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{MockUpstream, Reply, Spawn, TestApp};

const CHAT: &str = "/v1/chat/completions";

/// One provider `pool` whose model `m` is served on chat by one endpoint per (base URL, weight);
/// endpoint i targets model `t{i}`.
fn pool_file(members: &[(&str, f64)], request_timeout: f64) -> Value {
    let endpoints: Vec<Value> = members
        .iter()
        .enumerate()
        .map(|(i, (url, weight))| {
            json!({"path": "v1/chat/completions", "target_model_name": format!("t{i}"),
                   "target_base_url": url, "weight": weight})
        })
        .collect();
    json!({"pool": {
        "api_key_variable": "TEST_PROVIDER_KEY",
        "request_timeout": request_timeout,
        "models": {"m": {"endpoints": endpoints}}
    }})
}

fn chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Sends `count` chat requests, 8 at a time, and returns (status, attempts, upstream) of each.
async fn send_many(app: &TestApp, count: usize) -> Vec<(u16, String, String)> {
    futures_util::stream::iter(0..count)
        .map(|_| async {
            let response = app.post_json(CHAT, chat()).await;
            let seen = (
                response.status().as_u16(),
                header(&response, "x-llmux-attempts"),
                header(&response, "x-llmux-upstream"),
            );
            let _ = response.bytes().await;
            seen
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// A port nothing listens on: a dead member.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn weights_one_to_three_split_400_requests_100_to_300() {
    let heavy = MockUpstream::start().await;
    let app = Spawn::new()
        .file(
            "pool.json",
            pool_file(&[("{UPSTREAM}", 1.0), (&heavy.url, 3.0)], 10.0),
        )
        .start()
        .await;

    let answers = send_many(&app, 400).await;

    assert!(answers
        .iter()
        .all(|(status, attempts, _)| *status == 200 && attempts == "1"));
    let light_count = app.upstream.requests().len();
    let heavy_count = heavy.requests().len();
    assert!(
        light_count.abs_diff(100) <= 2,
        "light member got {light_count}"
    );
    assert!(
        heavy_count.abs_diff(300) <= 2,
        "heavy member got {heavy_count}"
    );
    // Each member receives its own target model.
    assert_eq!(app.upstream.last_request().json()["model"], "t0");
    assert_eq!(heavy.last_request().json()["model"], "t1");
}

#[tokio::test]
async fn a_dead_member_is_ejected_clients_never_see_it_and_it_is_readmitted_when_it_recovers() {
    let dead_port = closed_port();
    let dead_url = format!("http://127.0.0.1:{dead_port}");
    let app = Spawn::new()
        .file(
            "pool.json",
            pool_file(&[(&dead_url, 1.0), ("{UPSTREAM}", 1.0)], 10.0),
        )
        .args(|args| {
            args.eject_after = 2;
            args.eject_cooldown = Duration::from_secs(3);
        })
        .start()
        .await;

    let mut answers = Vec::new();
    for _ in 0..20 {
        let response = app.post_json(CHAT, chat()).await;
        answers.push((
            response.status().as_u16(),
            header(&response, "x-llmux-attempts"),
            header(&response, "x-llmux-upstream"),
        ));
    }

    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "{answers:?}"
    );
    let live = format!(
        "pool/t1@127.0.0.1:{}",
        app.upstream.url.rsplit(':').next().unwrap()
    );
    assert!(
        answers.iter().all(|(_, _, upstream)| *upstream == live),
        "{answers:?}"
    );
    // Without ejection every other request would first fail on the dead member.
    let retried = answers
        .iter()
        .filter(|(_, attempts, _)| attempts == "2")
        .count();
    assert!(
        (1..=3).contains(&retried),
        "{retried} requests retried: {answers:?}"
    );

    // /health/{model} shows which member the breaker keeps out.
    let health: serde_json::Value = app
        .http
        .get(app.url("/health/m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ejected: Vec<bool> = health["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ejected"].as_bool().unwrap())
        .collect();
    assert_eq!(ejected, [true, false], "{health}");

    // The member comes back: after its cooldown a trial request reaches it and re-admits it.
    let revived = MockUpstream::start_on(dead_port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while revived.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the revived member never got a trial request"
        );
        let response = app.post_json(CHAT, chat()).await;
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = revived.requests().len();
    let answers = send_many(&app, 20).await;
    assert!(answers
        .iter()
        .all(|(status, attempts, _)| *status == 200 && attempts == "1"));
    let after = revived.requests().len() - before;
    assert!(
        (8..=12).contains(&after),
        "re-admitted member got {after} of 20"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_1_is_retried_after_about_a_second() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 10.0))
        .start()
        .await;
    app.upstream.push(Reply::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: json!({"error": {"message": "slow down", "type": "rate_limit"}}).to_string(),
        headers: vec![("retry-after".into(), "1".into())],
    });

    let started = Instant::now();
    let response = app.post_json(CHAT, chat()).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llmux-attempts"), "2");
    assert!(header(&response, "x-llmux-upstream").starts_with("pool/t0@127.0.0.1:"));
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(app.upstream.requests().len(), 2);
}

#[tokio::test]
async fn a_retry_after_above_the_cap_sends_the_429_back_with_its_header() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 10.0))
        .args(|args| args.max_retry_wait = Duration::from_secs(2))
        .start()
        .await;
    app.upstream.push(Reply::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: json!({"error": {"message": "quota", "type": "rate_limit"}}).to_string(),
        headers: vec![("retry-after".into(), "30".into())],
    });

    let started = Instant::now();
    let response = app.post_json(CHAT, chat()).await;

    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "30");
    assert_eq!(header(&response, "x-llmux-attempts"), "1");
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "quota");
    assert_eq!(app.upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_400_is_never_retried() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 10.0))
        .start()
        .await;
    app.upstream.always(Reply::json(
        400,
        json!({"error": {"message": "bad messages", "type": "invalid_request_error"}}),
    ));

    let response = app.post_json(CHAT, chat()).await;

    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-llmux-attempts"), "1");
    assert_eq!(app.upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_502_answer_is_discarded_and_the_request_retried() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 10.0))
        .start()
        .await;
    app.upstream.push(Reply::json(
        502,
        json!({"error": {"message": "bad gateway"}}),
    ));
    app.upstream.push(Reply::json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));

    let response = app.post_json(CHAT, chat()).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llmux-attempts"), "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.json() == requests[0].json()));
}

#[tokio::test]
async fn max_retries_zero_sends_the_first_failure_back() {
    let mut file = pool_file(&[("{UPSTREAM}", 1.0)], 10.0);
    file["pool"]["max_retries"] = json!(0);
    let app = Spawn::new().file("pool.json", file).start().await;
    app.upstream
        .always(Reply::json(503, json!({"error": {"message": "down"}})));

    let response = app.post_json(CHAT, chat()).await;

    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "x-llmux-attempts"), "1");
    assert_eq!(app.upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_that_dies_mid_way_is_not_retried() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 10.0))
        .start()
        .await;
    app.upstream.push(Reply::SseThenBreak {
        events: vec![json!({"choices": [{"delta": {"content": "Hel"}}]}).to_string()],
    });

    let response = app
        .post_json(CHAT, json!({"model": "m", "stream": true, "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llmux-attempts"), "1");
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut broken = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }

    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("Hel"), "{text}");
    assert!(broken || !text.contains("[DONE]"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.upstream.requests().len(), 1);
}

#[tokio::test]
async fn the_retry_budget_stays_within_the_request_timeout() {
    let app = Spawn::new()
        .file("pool.json", pool_file(&[("{UPSTREAM}", 1.0)], 1.0))
        .start()
        .await;
    app.upstream.always(Reply::Stall(Duration::from_secs(4)));

    let started = Instant::now();
    let response = app.post_json(CHAT, chat()).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status(), 504);
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert_eq!(app.upstream.requests().len(), 1);

    // A requested wait that would end past the deadline is not waited for either.
    app.upstream.push(Reply::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: "{}".into(),
        headers: vec![("retry-after".into(), "2".into())],
    });
    let started = Instant::now();
    let response = app.post_json(CHAT, chat()).await;
    assert_eq!(response.status(), 429);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_pool_spans_two_files_and_providers() {
    let second = MockUpstream::start().await;
    let file = |provider: &str, url: &str| {
        json!({provider: {
            "target_base_url": url,
            "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": provider}]}}
        }})
    };
    let app = Spawn::new()
        .file("a.json", file("alpha", "{UPSTREAM}"))
        .file("b.json", file("beta", &second.url))
        .start()
        .await;

    let answers = send_many(&app, 40).await;

    assert!(answers.iter().all(|(status, _, _)| *status == 200));
    let mut by_upstream: HashMap<String, usize> = HashMap::new();
    for (_, _, upstream) in &answers {
        let provider = upstream.split('/').next().unwrap().to_owned();
        *by_upstream.entry(provider).or_default() += 1;
    }
    assert_eq!(
        by_upstream,
        HashMap::from([("alpha".into(), 20), ("beta".into(), 20)])
    );
    assert_eq!(app.upstream.requests().len(), 20);
    assert_eq!(second.last_request().json()["model"], "beta");
}

#[tokio::test]
async fn first_attempts_follow_the_weights_when_one_member_keeps_failing() {
    // Issue 12: retries advanced the round-robin cursor, so the failing member of a two-member
    // pool got every first attempt and every request paid a retry.
    let failing = MockUpstream::start().await;
    failing.always(Reply::json(503, json!({"error": {"message": "down"}})));
    let app = Spawn::new()
        .file(
            "pool.json",
            pool_file(&[(&failing.url, 1.0), ("{UPSTREAM}", 1.0)], 10.0),
        )
        // Never eject: the cursor alone decides first attempts.
        .args(|args| args.eject_after = 1_000_000)
        .start()
        .await;

    let mut first_try = 0;
    for _ in 0..20 {
        let response = app.post_json(CHAT, chat()).await;
        assert_eq!(response.status(), 200);
        if header(&response, "x-llmux-attempts") == "1" {
            first_try += 1;
        }
        let _ = response.bytes().await;
    }

    assert_eq!(
        first_try, 10,
        "half the first attempts go to the healthy member"
    );
    assert_eq!(failing.requests().len(), 10);
}
