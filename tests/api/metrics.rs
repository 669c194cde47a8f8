//! GET /metrics after scripted traffic: exact counters and token sums, the usage event llmux asks
//! for never reaching a client that did not, bounded series for unknown models, and the Grafana
//! dashboard querying only metrics llmux exports (issue #9).
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{provider_file, spawn_app, Reply, Spawn, TestApp};

/// Every sample of a scrape: `name{labels}` -> value.
async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    // Prometheus' own Accept header (issue 20: without it, the classic format is served).
    let response = app
        .http
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The value of `series` once it equals `expected`, waiting (with a deadline) for the access log
/// of the last request to be written: that happens just after its client got the last byte.
async fn assert_metric(app: &TestApp, series: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = scrape(app).await;
        let value = samples.get(series).copied();
        if value == Some(expected) {
            return;
        }
        if Instant::now() > deadline {
            let related: Vec<_> = samples
                .iter()
                .filter(|(name, _)| name.starts_with(series.split('{').next().unwrap()))
                .collect();
            panic!("{series} = {value:?}, expected {expected}; scraped {related:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tokens(kind: &str, estimated: bool) -> String {
    format!(
        r#"llmux_tokens_total{{model="m",provider="mock",type="{kind}",estimated="{estimated}"}}"#
    )
}

fn requests(path: &str, status: u16) -> String {
    format!(r#"llmux_requests_total{{model="m",provider="mock",path="{path}",status="{status}"}}"#)
}

fn chunk(content: &str) -> String {
    json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"t",
        "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}],"usage":null})
    .to_string()
}

fn usage_event(prompt: u64, completion: u64) -> String {
    json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"t","choices":[],
        "usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt + completion}})
    .to_string()
}

fn sse_with_usage(prompt: u64, completion: u64) -> Reply {
    Reply::Sse {
        events: vec![chunk("Hel"), chunk("lo"), usage_event(prompt, completion)],
        gap: Duration::from_millis(5),
    }
}

fn chat(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "Hi there"}]})
}

#[tokio::test]
async fn json_answers_count_requests_and_the_tokens_they_report() {
    let app = spawn_app().await;

    for _ in 0..3 {
        let response = app.post_json("/v1/chat/completions", chat(false)).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let response = app
        .post_json("/v1/embeddings", json!({"model": "m", "input": "abc"}))
        .await;
    response.bytes().await.unwrap();

    assert_metric(&app, &requests("v1/chat/completions", 200), 3.0).await;
    assert_metric(&app, &requests("v1/embeddings", 200), 1.0).await;
    // Echo reports 5 + 2 per chat answer and 3 prompt tokens per embedding.
    assert_metric(&app, &tokens("prompt", false), 18.0).await;
    assert_metric(&app, &tokens("completion", false), 6.0).await;
    let samples = scrape(&app).await;
    let latency = r#"llmux_request_duration_seconds_count{model="m",provider="mock",path="v1/chat/completions",stream="false"}"#;
    assert_eq!(samples[latency], 3.0);
    assert_eq!(
        samples[r#"llmux_upstream_attempts_total{outcome="response"}"#],
        4.0
    );
    assert_eq!(samples["llmux_requests_in_flight"], 0.0);
    assert!(!samples
        .keys()
        .any(|name| name.contains("estimated=\"true\"")));
}

#[tokio::test]
async fn a_stream_whose_client_did_not_ask_for_usage_never_shows_the_usage_event() {
    let app = spawn_app().await;
    app.upstream.push(sse_with_usage(11, 7));

    let response = app.post_json("/v1/chat/completions", chat(true)).await;
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();

    let upstream = app.upstream.last_request().json();
    assert_eq!(upstream["stream_options"], json!({"include_usage": true}));
    let expected = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk("Hel"),
        chunk("lo")
    );
    assert_eq!(body, expected);
    assert_metric(&app, &tokens("prompt", false), 11.0).await;
    assert_metric(&app, &tokens("completion", false), 7.0).await;
    let samples = scrape(&app).await;
    let first_byte = r#"llmux_time_to_first_byte_seconds_count{model="m",provider="mock",path="v1/chat/completions",stream="true"}"#;
    assert_eq!(samples[first_byte], 1.0);
    let rate = r#"llmux_output_tokens_per_second_count{model="m",provider="mock"}"#;
    assert_eq!(samples[rate], 1.0);
}

#[tokio::test]
async fn a_stream_whose_client_asked_for_usage_passes_untouched() {
    let app = spawn_app().await;
    app.upstream.push(sse_with_usage(13, 2));
    let mut request = chat(true);
    request["stream_options"] = json!({"include_usage": true});

    let response = app.post_json("/v1/chat/completions", &request).await;
    let body = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();

    let sent = app.upstream.last_request();
    assert_eq!(
        sent.json()["stream_options"],
        json!({"include_usage": true})
    );
    let expected = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk("Hel"),
        chunk("lo"),
        usage_event(13, 2)
    );
    assert_eq!(body, expected);
    assert_metric(&app, &tokens("prompt", false), 13.0).await;
    assert_metric(&app, &tokens("completion", false), 2.0).await;
}

#[tokio::test]
async fn async_openai_streams_without_usage_events_and_llmux_still_counts() {
    use async_openai::types::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    use futures_util::StreamExt;

    let app = spawn_app().await;
    app.upstream.push(sse_with_usage(4, 3));
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
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(
            chunk.choices.len(),
            1,
            "a chunk without choices reached the client"
        );
        assert!(chunk.usage.is_none());
        chunks += 1;
    }

    assert_eq!(chunks, 2);
    assert_metric(&app, &tokens("completion", false), 3.0).await;
}

#[tokio::test]
async fn backends_without_usage_are_estimated_with_o200k_base() {
    // Built on demand otherwise (the first counts are a token per four bytes until it is).
    assert!(llmux::proxy::usage::load_tokenizer());
    let app = spawn_app().await;
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "t",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "General Kenobi!"}, "finish_reason": "stop"}]});
    app.upstream.push(Reply::json(200, answer));
    // A stream that ignores include_usage: Echo streams "Hel", "lo", "!" and no usage event.
    app.upstream.push(Reply::Echo);

    app.post_json("/v1/chat/completions", chat(false))
        .await
        .bytes()
        .await
        .unwrap();
    let streamed = app.post_json("/v1/chat/completions", chat(true)).await;
    let streamed = String::from_utf8(streamed.bytes().await.unwrap().to_vec()).unwrap();

    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
    let prompt = llmux::proxy::usage::count_tokens("Hi there\n");
    let completion = llmux::proxy::usage::count_tokens("General Kenobi!\n")
        + llmux::proxy::usage::count_tokens("Hello!");
    assert!(prompt > 0 && completion > 0);
    assert_metric(&app, &tokens("prompt", true), 2.0 * prompt as f64).await;
    assert_metric(&app, &tokens("completion", true), completion as f64).await;
    assert_metric(&app, &requests("v1/chat/completions", 200), 2.0).await;
}

#[tokio::test]
async fn responses_streams_count_the_usage_of_response_completed() {
    let app = spawn_app().await;
    let events = vec![
        json!({"type": "response.created", "response": {"id": "r", "usage": null}}).to_string(),
        json!({"type": "response.output_text.delta", "delta": "Hi"}).to_string(),
        json!({"type": "response.completed", "response": {"id": "r", "usage": {"input_tokens": 21,
            "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 30}}})
        .to_string(),
    ];
    app.upstream.push(Reply::Sse {
        events,
        gap: Duration::ZERO,
    });

    let response = app
        .post_json(
            "/v1/responses",
            json!({"model": "m", "stream": true, "input": "Hi"}),
        )
        .await;
    let body = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();

    assert!(body.contains("response.completed"), "{body}");
    assert!(app
        .upstream
        .last_request()
        .json()
        .get("stream_options")
        .is_none());
    assert_metric(&app, &tokens("prompt", false), 21.0).await;
    assert_metric(&app, &tokens("completion", false), 9.0).await;
    assert_metric(&app, &tokens("cached", false), 20.0).await;
    assert_metric(&app, &tokens("reasoning", false), 4.0).await;
}

#[tokio::test]
async fn unknown_models_share_one_series_whatever_their_names() {
    let app = spawn_app().await;
    let unknown = r#"llmux_requests_total{model="unknown",provider="none",path="v1/chat/completions",status="404"}"#;
    let response = app
        .post_json("/v1/chat/completions", json!({"model": "first-stranger"}))
        .await;
    assert_eq!(response.status(), 404);
    assert_metric(&app, unknown, 1.0).await;
    let before = scrape(&app).await.len();

    for i in 0..25 {
        let model = format!("stranger-{i}-{}", fastrand_name(i));
        let response = app
            .post_json("/v1/chat/completions", json!({"model": model}))
            .await;
        assert_eq!(response.status(), 404);
    }

    assert_metric(&app, unknown, 26.0).await;
    let after = scrape(&app).await;
    assert_eq!(after.len(), before, "404s added series");
    assert!(!after.keys().any(|series| series.contains("stranger")));
}

fn fastrand_name(seed: usize) -> String {
    format!(
        "{:x}",
        (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind() {
    let app = spawn_app().await;
    // Every attempt (the first and its two retries) answers 503.
    app.upstream.always(Reply::json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));

    let response = app.post_json("/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 503);
    response.bytes().await.unwrap();

    assert_metric(&app, &requests("v1/chat/completions", 503), 1.0).await;
    assert_metric(
        &app,
        r#"llmux_upstream_errors_total{kind="status_5xx"}"#,
        3.0,
    )
    .await;
    assert_metric(
        &app,
        r#"llmux_upstream_attempts_total{outcome="response"}"#,
        3.0,
    )
    .await;
    let samples = scrape(&app).await;
    // An error answer reports no usage and is not estimated.
    assert!(!samples
        .keys()
        .any(|series| series.starts_with("llmux_tokens_total")));
    let endpoint_up = samples
        .iter()
        .filter(|(series, _)| series.starts_with("llmux_endpoint_up{model=\"m\""))
        .collect::<Vec<_>>();
    assert_eq!(endpoint_up.len(), 4, "{endpoint_up:?}");
    assert!(endpoint_up.iter().all(|(_, up)| **up == 1.0));
    assert!(samples["llmux_config_generation"] >= 1.0);
    assert_eq!(samples["llmux_config_errors"], 0.0);
    assert!(samples["process_resident_memory_bytes"] > 0.0);
    assert!(samples["process_open_fds"] > 0.0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_and_counts_no_tokens() {
    let file = provider_file("mock", "", &[("m", "target-m")])
        .to_string()
        .replace("{UPSTREAM}", "http://127.0.0.1:1");
    let app = Spawn::new().file("p.json", file).start().await;

    let response = app.post_json("/v1/chat/completions", chat(false)).await;
    assert_eq!(response.status(), 502);

    // One request, three attempts (the first and its two retries): each attempt is counted.
    assert_metric(&app, &requests("v1/chat/completions", 502), 1.0).await;
    assert_metric(
        &app,
        r#"llmux_upstream_errors_total{kind="unreachable"}"#,
        3.0,
    )
    .await;
    let samples = scrape(&app).await;
    assert_eq!(
        samples[r#"llmux_upstream_attempts_total{outcome="unreachable"}"#],
        3.0
    );
    assert!(!samples
        .keys()
        .any(|series| series.starts_with("llmux_tokens_total")));
}

/// Metric names a PromQL expression refers to: identifiers that start with `llmux_` or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("llmux_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                match (key.as_str(), member) {
                    ("expr" | "query", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(member, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_llmux_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/llmux.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let queried: BTreeSet<String> = exprs.iter().flat_map(|expr| metric_names(expr)).collect();

    // Traffic that makes every family show: answers, a stream, an error, a 404.
    let app = spawn_app().await;
    app.upstream.push(sse_with_usage(3, 3));
    app.post_json("/v1/chat/completions", chat(true))
        .await
        .bytes()
        .await
        .unwrap();
    app.post_json("/v1/chat/completions", chat(false))
        .await
        .bytes()
        .await
        .unwrap();
    app.post_json("/v1/chat/completions", json!({"model": "nope"}))
        .await
        .bytes()
        .await
        .unwrap();
    assert_metric(&app, &requests("v1/chat/completions", 200), 2.0).await;
    let exported: BTreeSet<String> = scrape(&app)
        .await
        .keys()
        .map(|series| series.split('{').next().unwrap().to_owned())
        .collect();

    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, llmux exports {exported:?}"
    );
    for needed in [
        "llmux_requests_total",
        "llmux_tokens_total",
        "llmux_endpoint_up",
        "llmux_config_errors",
        "llmux_overhead_seconds_bucket",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(llmux_request_duration_seconds_bucket{model=~"$model"}[5m]))) / process_open_fds"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["llmux_request_duration_seconds_bucket", "process_open_fds"]
    );
}

#[tokio::test]
async fn every_request_is_counted_404s_405s_and_health_checks_included() {
    // Issue 12: only proxied requests were recorded; the accept stage records every request.
    let app = spawn_app().await;

    assert_eq!(app.get("/no/such/url").await.status(), 404);
    let wrong_method = app.http.put(app.url("/v1/chat/completions")).send();
    assert_eq!(wrong_method.await.unwrap().status(), 405);
    assert_eq!(app.get("/health").await.status(), 200);

    let series = |path: &str, status: u16| {
        format!(
            r#"llmux_requests_total{{model="unknown",provider="none",path="{path}",status="{status}"}}"#
        )
    };
    assert_metric(&app, &series("unmatched", 404), 1.0).await;
    assert_metric(&app, &series("v1/chat/completions", 405), 1.0).await;
    assert_metric(&app, &series("health", 200), 1.0).await;
}
