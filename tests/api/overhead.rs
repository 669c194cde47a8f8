//! `llmux_overhead_seconds` (issue 17): a forwarded request's duration minus the time spent
//! waiting on the upstream, per operation, so a slow upstream does not show as llmux's cost.
use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_app, Reply, TestApp};

const CHAT: &str = "path=\"v1/chat/completions\"";

#[tokio::test]
async fn overhead_leaves_out_the_upstreams_wait_before_the_head_and_during_the_body() {
    let app = spawn_app().await;
    // 300 ms before the head, then a stream of 4 events 100 ms apart.
    app.upstream.push(Reply::Stall(Duration::from_millis(300)));
    app.upstream.push(Reply::Sse {
        events: (0..4)
            .map(|i| json!({"choices": [{"index": 0, "delta": {"content": i.to_string()}}]}))
            // With the usage llmux asked for: counting tokens itself would be its own cost.
            .chain([json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}})])
            .map(|event| event.to_string())
            .collect(),
        gap: Duration::from_millis(100),
    });
    let stalled = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        )
        .await;
    assert_eq!(stalled.status(), 200);
    stalled.text().await.unwrap();
    let streamed = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(streamed.status(), 200);
    streamed.text().await.unwrap();
    // Refused by llmux: no upstream wait to take out, so not an overhead observation.
    app.post_json("/v1/chat/completions", json!({"model": "nope"}))
        .await;

    let text = metrics(&app).await;
    let duration = sample(&text, "llmux_request_duration_seconds_sum", &[CHAT]);
    let overhead_sum = sample(&text, "llmux_overhead_seconds_sum", &[CHAT]);
    let overhead_count = sample(&text, "llmux_overhead_seconds_count", &[CHAT]);
    assert!(
        duration >= 0.6,
        "both requests waited on the upstream: {duration}"
    );
    assert_eq!(overhead_count, 2.0, "{text}");
    // Loopback, two requests: far below the 0.6 s the upstream took (a debug build on a busy
    // machine still stays well under this).
    assert!(overhead_sum < 0.15, "overhead {overhead_sum} of {duration}");
    assert!(overhead_sum > 0.0, "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("llmux_overhead_seconds_bucket")
                && line.contains("le=\"0.00005\"")),
        "sub-millisecond buckets: {text}"
    );
}

#[tokio::test]
async fn overhead_is_recorded_per_operation() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Stall(Duration::from_millis(200)));
    let answered = app
        .post_json("/v1/embeddings", json!({"model": "m", "input": "x"}))
        .await;
    assert_eq!(answered.status(), 200);
    answered.text().await.unwrap();
    let text = metrics(&app).await;
    let path = "path=\"v1/embeddings\"";
    assert_eq!(sample(&text, "llmux_overhead_seconds_count", &[path]), 1.0);
    assert!(
        sample(&text, "llmux_overhead_seconds_sum", &[path]) < 0.1,
        "{text}"
    );
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

/// The value of the sample named `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
