//! SSE streams pass through chunk by chunk; disconnects and silences end them.
use std::time::{Duration, Instant};

use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use futures_util::StreamExt;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, Reply, Spawn};

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
async fn async_openai_streams_a_chat_completion() {
    let app = spawn_app().await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("m")
        .stream(true)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hi")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();

    let mut stream = app.openai().chat().create_stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.model, "target-m");
        text.push_str(chunk.choices[0].delta.content.as_deref().unwrap_or(""));
    }

    assert_eq!(text, "Hello!");
}

#[tokio::test]
async fn chunks_sent_200ms_apart_reach_the_client_spread_out() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Sse {
        events: events(5),
        gap: Duration::from_millis(200),
    });

    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().get("content-length").is_none());
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut received = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
    {
        let chunk = chunk.unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        for _ in text.matches("data: ") {
            arrivals.push(started.elapsed());
        }
        received.push_str(text);
    }

    assert_eq!(arrivals.len(), 6, "{received}");
    assert!(received.ends_with("data: [DONE]\n\n"));
    for pair in arrivals.windows(2).skip(1) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(120),
            "events bunched: {arrivals:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Sse {
        events: events(50),
        gap: Duration::from_millis(100),
    });

    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "stream": true}),
        )
        .await;
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap();
    assert!(first.is_some());
    drop(body);

    let deadline = Instant::now() + Duration::from_secs(5);
    while app.upstream.streams_cancelled() == 0 {
        assert!(
            Instant::now() < deadline,
            "upstream stream still running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.upstream.streams_finished(), 0);
}

#[tokio::test]
async fn an_upstream_silent_for_longer_than_request_timeout_ends_the_stream() {
    let file = json!({"p": {"target_base_url": "{UPSTREAM}", "request_timeout": 1,
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}});
    let app = Spawn::new().file("p.json", file).start().await;
    app.upstream.push(Reply::Sse {
        events: events(3),
        gap: Duration::from_secs(4),
    });

    let started = Instant::now();
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let mut failed = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(6), body.next())
        .await
        .unwrap()
    {
        match chunk {
            Ok(bytes) => received.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }

    assert!(failed, "the stream should end abnormally, got {received}");
    assert_eq!(received.matches("data: ").count(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_gives_up_before_the_head_cancels_the_upstream_and_is_recorded_as_499() {
    // Issue 12: the upstream request ran on until the upstream answered, recorded as a 200.
    let app = spawn_app().await;
    app.upstream.push(Reply::Stall(Duration::from_secs(5)));

    let gave_up = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({"model": "m"}).to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;

    assert!(gave_up.is_err(), "the upstream stalls: the client gives up");
    // Well before the stall's 5 s: the upstream request was cancelled, not waited for.
    eventually(
        Duration::from_secs(3),
        "the upstream request to be cancelled",
        || async { (app.upstream.stalls_cancelled() == 1).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(3), "a 499 in the metrics", || async {
        let text = app.get("/metrics").await.text().await.unwrap();
        text.lines()
            .any(|line| {
                line.starts_with("llmux_requests_total{")
                    && line.contains(r#"status="499""#)
                    && line.ends_with(" 1")
            })
            .then_some(())
    })
    .await;
}
