//! Access control on the request path (issue 18): client keys, allowed models and operations,
//! limits and their headers, the admin credential, the decision trace, live key-file edits.
use std::time::{Duration, Instant};

use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{
    assert_openai_error, eventually, provider_file, Binary, Reply, Spawn, TestApp, ADMIN_TOKEN,
};

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key entry for `key` with `extra` fields.
fn entry(name: &str, key: &str, extra: Value) -> Value {
    let mut entry = json!({"name": name, "key_sha256": digest(key)});
    if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
        entry.extend(extra.clone());
    }
    entry
}

fn key_file(keys: Vec<Value>) -> Value {
    json!({"llmux_access": {"keys": keys}})
}

/// llmux serving models `m`, `openai/gpt-4o` and `llama-3` with `keys.json`.
async fn spawn_with(access: Value) -> TestApp {
    start_with(Spawn::new(), access).await
}

/// `spawn_with`, plus the admin token (which turns the admin API and its store on).
async fn spawn_with_admin(access: Value) -> TestApp {
    start_with(Spawn::new().admin_token(), access).await
}

async fn start_with(spawn: Spawn, access: Value) -> TestApp {
    spawn
        .file(
            "provider.json",
            provider_file(
                "mock",
                "",
                &[
                    ("m", "target-m"),
                    ("openai/gpt-4o", "gpt-4o"),
                    ("llama-3", "llama"),
                ],
            ),
        )
        .file("keys.json", access)
        .start()
        .await
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
}

impl TestApp {
    async fn chat_as(&self, key: &str, model: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(model))
            .send()
            .await
            .expect("request reaches llmux")
    }

    fn openai_as(&self, key: &str) -> async_openai::Client<async_openai::config::OpenAIConfig> {
        let config = async_openai::config::OpenAIConfig::new()
            .with_api_base(self.url("/v1"))
            .with_api_key(key);
        async_openai::Client::with_config(config)
    }

    fn write_keys(&self, access: Value) {
        let path = self.config_dir.path().join("keys.json");
        let temp = self.config_dir.path().join(".keys.json.tmp");
        std::fs::write(&temp, access.to_string()).unwrap();
        std::fs::rename(temp, path).unwrap();
    }
}

#[tokio::test]
async fn a_missing_or_unknown_key_gets_401_invalid_api_key() {
    let app = spawn_with(key_file(vec![entry("k", "llmux_good", json!({}))])).await;

    let missing = app.post_json("/v1/chat/completions", chat_body("m")).await;
    let error = assert_openai_error(missing, 401).await;
    assert_eq!(error["code"], "invalid_api_key");

    let unknown = app.chat_as("llmux_not_configured", "m").await;
    let error = assert_openai_error(unknown, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    assert!(
        !error["message"]
            .as_str()
            .unwrap()
            .contains("llmux_not_configured"),
        "{error}"
    );
    assert!(app.upstream.requests().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn the_openai_sdk_and_the_azure_header_both_present_keys() {
    let app = spawn_with(key_file(vec![entry("k", "llmux_good", json!({}))])).await;

    let request = CreateChatCompletionRequestArgs::default()
        .model("m")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hello")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let answer = app
        .openai_as("llmux_good")
        .chat()
        .create(request)
        .await
        .unwrap();
    assert_eq!(answer.model, "target-m");

    let azure = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("api-key", "llmux_good")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(azure.status(), 200);
}

#[tokio::test]
async fn an_expired_or_disabled_key_gets_401_saying_so() {
    let app = spawn_with(key_file(vec![
        entry(
            "old",
            "llmux_old",
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
        ),
        entry("off", "llmux_off", json!({"disabled": true})),
    ]))
    .await;

    let expired = assert_openai_error(app.chat_as("llmux_old", "m").await, 401).await;
    assert_eq!(expired["code"], "invalid_api_key");
    assert!(
        expired["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );
    let disabled = assert_openai_error(app.chat_as("llmux_off", "m").await, 401).await;
    assert!(
        disabled["message"].as_str().unwrap().contains("disabled"),
        "{disabled}"
    );
}

#[tokio::test]
async fn a_forbidden_model_gets_the_same_404_as_a_model_that_does_not_exist() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"allowed_models": ["openai/*"]}),
    )]))
    .await;

    let allowed = app.chat_as("llmux_k", "openai/gpt-4o").await;
    assert_eq!(allowed.status(), 200);
    let forbidden = assert_openai_error(app.chat_as("llmux_k", "llama-3").await, 404).await;
    let unknown = assert_openai_error(app.chat_as("llmux_k", "no-such-model").await, 404).await;

    assert_eq!(forbidden["code"], unknown["code"]);
    assert_eq!(forbidden["code"], "model_not_found");
    assert_eq!(forbidden["type"], unknown["type"]);
    assert_eq!(
        forbidden["message"]
            .as_str()
            .unwrap()
            .replace("llama-3", "X"),
        unknown["message"]
            .as_str()
            .unwrap()
            .replace("no-such-model", "X")
    );
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"allowed_models": ["openai/*", "m"]}),
    )]))
    .await;

    let listed = app.openai_as("llmux_k").models().list().await.unwrap();
    let mut names: Vec<String> = listed.data.into_iter().map(|m| m.id).collect();
    names.sort();
    assert_eq!(names, ["m", "openai/gpt-4o"]);

    let one = app
        .http
        .get(app.url("/v1/models/llama-3"))
        .bearer_auth("llmux_k")
        .send()
        .await
        .unwrap();
    assert_openai_error(one, 404).await;
    let visible = app
        .http
        .get(app.url("/v1/models/openai/gpt-4o"))
        .bearer_auth("llmux_k")
        .send()
        .await
        .unwrap();
    assert_eq!(visible.status(), 200);
    let anonymous = app.get("/v1/models").await;
    assert_openai_error(anonymous, 401).await;
}

#[tokio::test]
async fn an_operation_the_key_may_not_call_is_refused() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"allowed_operations": ["embeddings"]}),
    )]))
    .await;

    let refused = assert_openai_error(app.chat_as("llmux_k", "m").await, 403).await;
    assert_eq!(refused["code"], "permission_denied");
    let embeddings = app
        .http
        .post(app.url("/v1/embeddings"))
        .bearer_auth("llmux_k")
        .json(&json!({"model": "m", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(embeddings.status(), 200);
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn over_a_limit_gets_429_with_retry_after_and_every_answer_has_rate_limit_headers() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"requests_per_minute": 2, "tokens_per_minute": 10000}),
    )]))
    .await;

    let first = app.chat_as("llmux_k", "m").await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(header(&first, "x-ratelimit-reset-requests"), Some("30s"));
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), Some("10000"));
    assert!(header(&first, "x-ratelimit-remaining-tokens").is_some());
    assert!(header(&first, "x-ratelimit-reset-tokens").is_some());
    assert!(header(&first, "x-llmux-quota-decision").is_none());
    assert_eq!(app.chat_as("llmux_k", "m").await.status(), 200);

    let refused = app.chat_as("llmux_k", "m").await;
    assert_eq!(header(&refused, "retry-after"), Some("30"));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    let error = assert_openai_error(refused, 429).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(app.upstream.requests().len(), 2);
}

#[tokio::test]
async fn fifty_concurrent_clients_against_a_100_per_minute_key_get_exactly_100_admitted() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"requests_per_minute": 100}),
    )]))
    .await;
    let started = Instant::now();

    let clients = (0..50).map(|_| {
        let http = reqwest::Client::new();
        let url = app.url("/v1/chat/completions");
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..4 {
                let response = http
                    .post(&url)
                    .bearer_auth("llmux_k")
                    .json(&chat_body("m"))
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        })
    });
    let mut statuses = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        statuses.extend(
            tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let elapsed = started.elapsed();

    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + refused, 200, "{statuses:?}");
    // The limit is smooth: one more request fits every 600 ms. The run takes well under that,
    // so exactly the burst of 100 is admitted; a slower machine may see one more per 600 ms.
    let refills = (elapsed.as_millis() / 600) as usize;
    assert!(
        admitted >= 100 && admitted <= 100 + refills,
        "{admitted} admitted in {elapsed:?}"
    );
    if refills == 0 {
        assert_eq!(admitted, 100);
    }
    assert_eq!(app.upstream.requests().len(), admitted);
}

#[tokio::test]
async fn token_limits_settle_from_real_usage_streamed_or_not() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"tokens_per_day": 100000}),
    )]))
    .await;
    let remaining = |response: &reqwest::Response| -> i64 {
        header(response, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap()
    };
    let send = |body: Value| {
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth("llmux_k")
            .json(&body)
            .send()
    };

    // Non-streamed: the mock reports 7 tokens (5 prompt + 2 completion).
    let first = send(chat_body("m")).await.unwrap();
    let after_first = remaining(&first);
    first.text().await.unwrap();
    let second = send(chat_body("m")).await.unwrap();
    // The same estimate is reserved each time: the difference is what the first really used.
    assert_eq!(after_first - remaining(&second), 7);
    let after_second = remaining(&second);
    second.text().await.unwrap();

    // Streamed: the usage event says 30.
    app.upstream.push(Reply::Sse {
        events: vec![
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}).to_string(),
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}).to_string(),
        ],
        gap: Duration::ZERO,
    });
    let mut streamed_body = chat_body("m");
    streamed_body["stream"] = json!(true);
    let streamed = send(streamed_body).await.unwrap();
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    let next = send(chat_body("m")).await.unwrap();
    // Since the second request: its own 7, then the stream's 30 (its larger estimate is gone).
    assert_eq!(after_second - remaining(&next), 7 + 30);
}

#[tokio::test]
async fn a_tiny_token_budget_refuses_once_spent() {
    let app = spawn_with(key_file(vec![entry(
        "k",
        "llmux_k",
        json!({"tokens_per_day": 7}),
    )]))
    .await;
    // The first request's estimate is capped at the limit and passes; it really uses 7.
    let first = app.chat_as("llmux_k", "m").await;
    assert_eq!(first.status(), 200);
    first.text().await.unwrap();
    let refused = app.chat_as("llmux_k", "m").await;
    assert_openai_error(refused, 429).await;
}

#[tokio::test]
async fn an_upload_counts_against_the_request_quota() {
    let app = Spawn::new()
        .file(
            "provider.json",
            json!({"mock": {"target_base_url": "{UPSTREAM}", "models": {"whisper": {"endpoints": [
                {"path": "v1/audio/transcriptions", "target_model_name": "whisper-1"}]}}}}),
        )
        .file(
            "keys.json",
            json!({"llmux_access": {
                "keys": [entry("k", "llmux_k", json!({}))],
                "quota_policies": [{"api_path": "/v1/audio/*", "window_type": "day", "request_limit": 1}]
            }}),
        )
        .start()
        .await;
    let upload = || {
        let form = reqwest::multipart::Form::new()
            .text("model", "whisper")
            .part(
                "file",
                reqwest::multipart::Part::bytes(vec![0u8; 4096]).file_name("a.wav"),
            );
        app.http
            .post(app.url("/v1/audio/transcriptions"))
            .bearer_auth("llmux_k")
            .multipart(form)
            .send()
    };

    let first = upload().await.unwrap();
    assert_eq!(first.status(), 200);
    first.text().await.unwrap();
    let second = upload().await.unwrap();
    assert_openai_error(second, 429).await;
}

#[tokio::test]
async fn the_client_key_never_reaches_the_upstream() {
    let app = spawn_with_admin(key_file(vec![entry(
        "k",
        "llmux_secret_client_key",
        json!({}),
    )]))
    .await;

    app.chat_as("llmux_secret_client_key", "m")
        .await
        .text()
        .await
        .unwrap();
    app.http
        .post(app.url("/v1/embeddings"))
        .header("api-key", "llmux_secret_client_key")
        .header("x-llmux-admin-token", ADMIN_TOKEN)
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();

    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {}", crate::helpers::PROVIDER_KEY).as_str())
        );
        for (name, value) in &request.headers {
            assert!(
                !value.contains("llmux_secret_client_key"),
                "{name}: {value}"
            );
            assert!(!value.contains(ADMIN_TOKEN), "{name}: {value}");
        }
    }
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let app = spawn_with_admin(key_file(vec![entry("k", "llmux_k", json!({}))])).await;

    let anonymous = app.get("/admin/config").await;
    assert_openai_error(anonymous, 401).await;
    let client_key = app
        .http
        .get(app.url("/admin/config"))
        .bearer_auth("llmux_k")
        .send()
        .await
        .unwrap();
    assert_openai_error(client_key, 401).await;
    let admin = app
        .http
        .get(app.url("/admin/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

#[tokio::test]
async fn without_an_admin_token_admin_endpoints_answer_503_saying_why() {
    let app = Spawn::new()
        .file("provider.json", provider_file("mock", "", &[("m", "t")]))
        .start()
        .await;

    let error = assert_openai_error(app.get("/admin/config").await, 503).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("LLMUX_ADMIN_TOKEN"),
        "{error}"
    );
}

#[tokio::test]
async fn the_decision_trace_is_for_admins_only_and_a_client_cannot_ask_for_it() {
    let app = spawn_with_admin(json!({"llmux_access": {
        "keys": [entry("k", "llmux_k", json!({"owner_id": "alice"}))],
        "quota_policies": [{"api_path": "/v1/chat/completions", "window_type": "minute", "request_limit": 10}]
    }}))
    .await;
    let with_header = |name: &'static str, value: &'static str| {
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth("llmux_k")
            .header(name, value)
            .json(&chat_body("m"))
            .send()
    };

    let client = with_header("x-foap-debug-quota", "1").await.unwrap();
    assert!(header(&client, "x-llmux-quota-decision").is_none());
    assert!(header(&client, "x-foap-quota-decision").is_none());
    let wrong = with_header("x-llmux-admin-token", "guess").await.unwrap();
    assert!(header(&wrong, "x-llmux-quota-decision").is_none());
    let admin = with_header("x-llmux-admin-token", ADMIN_TOKEN)
        .await
        .unwrap();
    let trace = header(&admin, "x-llmux-quota-decision").unwrap();
    assert!(trace.starts_with("source=policy;allowed=true;"), "{trace}");
    assert!(trace.contains("remaining=7"), "{trace}");
    assert!(!trace.contains("alice"), "{trace}");
}

#[tokio::test]
async fn key_file_edits_are_live_within_two_seconds() {
    let app = spawn_with(key_file(vec![entry("a", "llmux_a", json!({}))])).await;
    let status_of = |key: &'static str| {
        let app = &app;
        move || async move { Some(app.chat_as(key, "m").await.status().as_u16()) }
    };
    assert_eq!(status_of("llmux_a")().await, Some(200));
    let wait_for = |key: &'static str, wanted: u16, what: &'static str| {
        let app = &app;
        async move {
            eventually(Duration::from_secs(2), what, || async move {
                (app.chat_as(key, "m").await.status().as_u16() == wanted).then_some(())
            })
            .await
        }
    };

    // Added.
    app.write_keys(key_file(vec![
        entry("a", "llmux_a", json!({})),
        entry("b", "llmux_b", json!({})),
    ]));
    wait_for("llmux_b", 200, "a new key to work").await;
    // Edited: b may no longer use m.
    app.write_keys(key_file(vec![
        entry("a", "llmux_a", json!({})),
        entry("b", "llmux_b", json!({"allowed_models": ["other"]})),
    ]));
    wait_for("llmux_b", 404, "an edited key's models to apply").await;
    // A broken edit keeps the last good version.
    std::fs::write(
        app.config_dir.path().join("keys.json"),
        "{\"llmux_access\": {\"keys\": [",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status_of("llmux_a")().await, Some(200));
    // Disabled.
    app.write_keys(key_file(vec![
        entry("a", "llmux_a", json!({"disabled": true})),
        entry("b", "llmux_b", json!({})),
    ]));
    wait_for("llmux_a", 401, "a disabled key to be refused").await;
    // Removed.
    app.write_keys(key_file(vec![entry(
        "a",
        "llmux_a",
        json!({"disabled": true}),
    )]));
    wait_for("llmux_b", 401, "a removed key to be refused").await;
}

#[tokio::test]
async fn no_key_or_digest_shows_in_logs_errors_admin_config_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::helpers::MockUpstream::start().await;
    let provider = provider_file("mock", "", &[("m", "t")])
        .to_string()
        .replace("{UPSTREAM}", &upstream.url);
    std::fs::write(dir.path().join("provider.json"), provider).unwrap();
    let key = "llmux_K3y_that_must_never_be_seen";
    std::fs::write(
        dir.path().join("keys.json"),
        key_file(vec![entry(
            "visible-name",
            key,
            json!({"requests_per_minute": 1}),
        )])
        .to_string(),
    )
    .unwrap();
    // The admin token turns the admin API on: its store goes to a temp dir.
    let data = tempfile::tempdir().unwrap();
    let binary = Binary::start(
        dir.path(),
        &["--log", "debug"],
        &[
            ("LLMUX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("LLMUX_DATA_DIR", data.path().to_str().unwrap()),
            ("TEST_PROVIDER_KEY", "sk-upstream"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let chat = |key: &'static str| {
        http.post(binary.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body("m"))
            .send()
    };

    let mut seen = Vec::new();
    for key in [key, key, "llmux_unknown_key_also_secret"] {
        let response = chat(key).await.unwrap();
        seen.push(response.text().await.unwrap());
    }
    for path in ["/admin/config", "/metrics"] {
        let response = http
            .get(binary.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        seen.push(response.text().await.unwrap());
    }
    let (_, _) = eventually(Duration::from_secs(5), "three access-log lines", || {
        let count = binary.lines_with("visible-name").len();
        async move { (count >= 2).then_some(()) }
    })
    .await;
    seen.extend(binary.lines.lock().unwrap().iter().cloned());

    let hex = digest(key);
    for text in &seen {
        assert!(!text.contains(key), "{text}");
        assert!(!text.contains("llmux_unknown_key_also_secret"), "{text}");
        assert!(!text.contains(&hex[..16]), "{text}");
        assert!(!text.contains(ADMIN_TOKEN), "{text}");
    }
    let metrics = &seen[4];
    assert!(
        metrics.contains("llmux_client_requests_total{key=\"visible-name\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "llmux_client_refusals_total{key=\"visible-name\",reason=\"rate_limited\"} 1"
        ),
        "{metrics}"
    );
    let lines = binary.lines_with("\"key_name\":\"visible-name\"");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"key_owner\":\"key:visible-name\"")),
        "{lines:?}"
    );
}
