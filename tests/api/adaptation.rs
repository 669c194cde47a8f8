//! Provider adaptation (issue #8): auth styles, headers, query, target_path, drop_params, the
//! json_schema fallback, base64 embeddings emulation, model_field, and Responses API id routing.
use std::path::Path;
use std::time::Duration;

use async_openai::types::responses::{CreateResponseArgs, Input};
use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    CreateEmbeddingRequestArgs, EncodingFormat,
};
use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, MockUpstream, Reply, Spawn, TestApp, PROVIDER_KEY};

/// One provider at the mock serving model `m` (target `target-m`) on `path`, with `provider`
/// settings merged into the provider and `endpoint` settings into the endpoint.
fn adapted(path: &str, provider: Value, endpoint: Value) -> Value {
    let mut endpoint_json = json!({"path": path, "target_model_name": "target-m"});
    merge(&mut endpoint_json, endpoint);
    let mut provider_json = json!({
        "api_key_variable": "TEST_PROVIDER_KEY",
        "target_base_url": "{UPSTREAM}",
        "request_timeout": 10,
        "models": {"m": {"endpoints": [endpoint_json]}}
    });
    merge(&mut provider_json, provider);
    json!({ "adapted": provider_json })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

async fn spawn(config: Value) -> TestApp {
    Spawn::new().file("adapted.json", config).start().await
}

fn chat_completion_answer() -> Reply {
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-azure", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }),
    )
}

fn hello() -> CreateChatCompletionRequestArgs {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("m")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hi")
            .build()
            .unwrap()
            .into()]);
    args
}

#[tokio::test]
async fn azure_style_api_key_query_and_target_path_reach_the_deployment() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({"auth_header": "api-key", "auth_scheme": "", "query": {"api-version": "2024-10-21"}}),
        json!({"target_path": "/openai/deployments/gpt-4o-prod/chat/completions"}),
    ))
    .await;
    app.upstream.push(chat_completion_answer());

    let answer = app
        .openai()
        .chat()
        .create(hello().build().unwrap())
        .await
        .unwrap();

    assert_eq!(answer.choices[0].message.content.as_deref(), Some("Hi!"));
    let upstream = app.upstream.last_request();
    assert_eq!(
        upstream.uri,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(upstream.header("api-key"), Some(PROVIDER_KEY));
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(upstream.json()["model"], "target-m");
}

#[tokio::test]
async fn the_shipped_azure_example_loads_without_errors() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/azure-example.json");
    let env = |name: &str| (name == "AZURE_OPENAI_API_KEY").then(|| "azure-key".to_owned());

    let loaded = llmux::config::load::load_file(&file, &env);

    assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.problems);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let endpoints = loaded.endpoints.unwrap();
    let chat = endpoints
        .iter()
        .find(|e| &*e.path == "v1/chat/completions")
        .unwrap();
    assert!(chat.upstream_uri.path().starts_with("/openai/deployments/"));
    assert!(chat
        .upstream_uri
        .query()
        .unwrap()
        .starts_with("api-version="));
    assert_eq!(chat.auth_header.as_str(), "api-key");
    assert_eq!(chat.authorization.as_ref().unwrap(), "azure-key");
}

#[tokio::test]
async fn configured_headers_expand_variables_and_the_endpoint_wins() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({"headers": {"X-Title": "llmux", "X-Env": "provider", "X-Goog-Api-Key": "${TEST_PROVIDER_KEY}"}}),
        json!({"headers": {"x-env": "endpoint", "X-Key-Suffix": "key=${TEST_PROVIDER_KEY};"}}),
    ))
    .await;

    app.openai()
        .chat()
        .create(hello().build().unwrap())
        .await
        .unwrap();

    let upstream = app.upstream.last_request();
    assert_eq!(upstream.header("x-title"), Some("llmux"));
    assert_eq!(upstream.header("x-env"), Some("endpoint"));
    assert_eq!(upstream.header("x-goog-api-key"), Some(PROVIDER_KEY));
    assert_eq!(
        upstream.header("x-key-suffix"),
        Some(format!("key={PROVIDER_KEY};").as_str())
    );
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
}

#[tokio::test]
async fn a_configured_accept_encoding_replaces_the_identity_llmux_asks_for() {
    // Issue 16: llmux now writes `Accept-Encoding: identity` itself (awc did, unless one was
    // set); a configured value still wins. `Host` cannot be configured (reserved).
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({}),
        json!({"headers": {"Accept-Encoding": "gzip"}}),
    ))
    .await;

    app.openai()
        .chat()
        .create(hello().build().unwrap())
        .await
        .unwrap();

    let upstream = app.upstream.last_request();
    assert_eq!(upstream.header("accept-encoding"), Some("gzip"));
    let url = app.upstream.url.trim_start_matches("http://");
    assert_eq!(upstream.header("host"), Some(url));
}

#[tokio::test]
async fn invalid_headers_fail_the_file_with_a_position() {
    let text = adapted(
        "v1/chat/completions",
        json!({"headers": {"bad header": "x"}}),
        json!({}),
    );
    let text = serde_json::to_string_pretty(&text)
        .unwrap()
        .replace("{UPSTREAM}", "http://127.0.0.1:1");
    let env = |_: &str| None;

    let loaded = llmux::config::load::parse_file(Path::new("bad.json"), &text, &env);

    assert!(loaded.endpoints.is_none());
    let error = loaded.errors().next().unwrap();
    assert_eq!(error.json_path, r#"adapted.headers["bad header"]"#);
    assert!(error.position.is_some(), "{error}");
    assert!(
        error.message.contains("not a valid HTTP header name"),
        "{error}"
    );
}

#[tokio::test]
async fn drop_params_removes_top_level_keys_and_keeps_every_other_byte() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({"drop_params": ["prompt_cache_key", "logprobs", "top_logprobs", "parallel_tool_calls"]}),
        json!({}),
    ))
    .await;
    let body = "{\"model\": \"m\",\n  \"logprobs\": true, \"top_logprobs\": 3,\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9\", \"logprobs\": 1}],\n  \"temperature\": 0.10000000000000001,\n  \"parallel_tool_calls\": false,\n  \"prompt_cache_key\": \"k\"\n}";

    let response = app.post_json("/v1/chat/completions", body).await;

    assert_eq!(response.status(), 200);
    let expected = "{\"model\": \"target-m\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9\", \"logprobs\": 1}],\n  \"temperature\": 0.10000000000000001\n}";
    let received = app.upstream.last_request().body;
    assert_eq!(std::str::from_utf8(&received).unwrap(), expected);
}

const SCHEMA: &str = r#"{"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": false}"#;
const MINIFIED_SCHEMA: &str = r#"{"type":"object","properties":{"answer":{"type":"integer"}},"required":["answer"],"additionalProperties":false}"#;

#[tokio::test]
async fn chat_json_schema_goes_up_as_json_object_with_the_schema_in_a_system_message() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({"response_format_fallback": "json_object"}),
        json!({}),
    ))
    .await;
    let messages =
        r#"[{"role": "system", "content": "You count."}, {"role": "user", "content": "2+2?"}]"#;
    let body = format!(
        "{{\"model\": \"m\", \"messages\": {messages},\n \"response_format\": {{\"type\": \"json_schema\", \"json_schema\": {{\"name\": \"sum\", \"schema\": {SCHEMA}, \"strict\": true}}}}, \"seed\": 7}}"
    );

    let response = app.post_json("/v1/chat/completions", &body).await;

    assert_eq!(response.status(), 200);
    let received = app.upstream.last_request();
    let json = received.json();
    assert_eq!(json["response_format"], json!({"type": "json_object"}));
    let system = json["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You count.\n\n"), "{system}");
    assert!(system.contains("JSON"), "{system}");
    assert!(system.contains(MINIFIED_SCHEMA), "{system}");
    // Everything else is the client's bytes.
    let extended = serde_json::to_string(system).unwrap();
    let expected = body
        .replace("\"model\": \"m\"", "\"model\": \"target-m\"")
        .replace("\"You count.\"", &extended)
        .replace(
            &format!("{{\"type\": \"json_schema\", \"json_schema\": {{\"name\": \"sum\", \"schema\": {SCHEMA}, \"strict\": true}}}}"),
            r#"{"type":"json_object"}"#,
        );
    assert_eq!(std::str::from_utf8(&received.body).unwrap(), expected);
}

#[tokio::test]
async fn chat_json_schema_without_a_system_message_gets_one_first() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({"response_format_fallback": "json_object"}),
        json!({}),
    ))
    .await;
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"2+2?"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"sum","schema":{SCHEMA}}}}}}}"#
    );

    app.post_json("/v1/chat/completions", &body).await;

    let json = app.upstream.last_request().json();
    assert_eq!(json["messages"][0]["role"], "system");
    assert!(json["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains(MINIFIED_SCHEMA));
    assert_eq!(
        json["messages"][1],
        json!({"role": "user", "content": "2+2?"})
    );
    assert_eq!(json["response_format"], json!({"type": "json_object"}));
}

#[tokio::test]
async fn responses_text_format_json_schema_goes_up_as_json_object_with_instructions() {
    let app = spawn(adapted(
        "v1/responses",
        json!({"response_format_fallback": "json_object"}),
        json!({}),
    ))
    .await;
    let body = format!(
        r#"{{"model":"m","input":"2+2?","text":{{"format":{{"type":"json_schema","name":"sum","schema":{SCHEMA},"strict":true}}}}}}"#
    );

    let response = app.post_json("/v1/responses", &body).await;

    assert_eq!(response.status(), 200);
    let received = app.upstream.last_request();
    let json = received.json();
    assert_eq!(json["text"]["format"], json!({"type": "json_object"}));
    let instructions = json["instructions"].as_str().unwrap();
    assert!(instructions.contains(MINIFIED_SCHEMA), "{instructions}");
    let text = std::str::from_utf8(&received.body).unwrap();
    assert!(
        text.ends_with(
            r#""model":"target-m","input":"2+2?","text":{"format":{"type":"json_object"}}}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn base64_embeddings_are_emulated_from_float_and_decode_to_the_same_numbers() {
    let app = spawn(adapted(
        "v1/embeddings",
        json!({"upstream_embedding_format": "float"}),
        json!({}),
    ))
    .await;
    let request = CreateEmbeddingRequestArgs::default()
        .model("m")
        .input("text")
        .encoding_format(EncodingFormat::Base64)
        .build()
        .unwrap();

    let answer = app
        .openai()
        .embeddings()
        .create_base64(request)
        .await
        .unwrap();

    let vector: Vec<f32> = answer.data[0].embedding.clone().into();
    assert_eq!(vector, vec![0.25, -0.5, 1.0]);
    assert_eq!(
        app.upstream.last_request().json()["encoding_format"],
        "float"
    );

    // A client asking for float gets the upstream's answer as is.
    let request = CreateEmbeddingRequestArgs::default()
        .model("m")
        .input("t")
        .build()
        .unwrap();
    let answer = app.openai().embeddings().create(request).await.unwrap();
    assert_eq!(answer.data[0].embedding, vec![0.25, -0.5, 1.0]);
}

#[tokio::test]
async fn model_field_false_leaves_the_body_untouched() {
    let app = spawn(adapted(
        "v1/chat/completions",
        json!({}),
        json!({"model_field": false}),
    ))
    .await;
    let body = r#"{"model": "m", "messages": [{"role": "user", "content": "Hi"}]}"#;

    app.post_json("/v1/chat/completions", body).await;

    assert_eq!(&app.upstream.last_request().body[..], body.as_bytes());
}

fn response_object(id: &str) -> Value {
    json!({"id": id, "object": "response", "created_at": 1, "model": "target", "status": "completed", "output": []})
}

/// Two providers on two upstreams: model `a` on `{UPSTREAM}`, model `b` on `other`.
fn two_upstreams(other: &MockUpstream) -> Value {
    let provider = |base: &str, model: &str| {
        json!({
            "api_key_variable": "TEST_PROVIDER_KEY",
            "target_base_url": base,
            "request_timeout": 10,
            "models": {model: {"endpoints": [{"path": "v1/responses", "target_model_name": model}]}}
        })
    };
    json!({"pa": provider("{UPSTREAM}", "a"), "pb": provider(&other.url, "b")})
}

#[tokio::test]
async fn calls_on_a_response_id_go_to_the_upstream_that_created_it() {
    let other = MockUpstream::start().await;
    let app = Spawn::new()
        .file("two.json", two_upstreams(&other))
        .start()
        .await;
    // `b` answers a plain create; `a` streams, the id in its response.created event.
    other.push(Reply::json(200, response_object("resp_B")));
    let created = app
        .openai()
        .responses()
        .create(
            CreateResponseArgs::default()
                .model("b")
                .input(Input::Text("Hi".into()))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.id, "resp_B");
    app.upstream.push(Reply::Sse {
        events: vec![
            json!({"type": "response.created", "sequence_number": 0, "response": response_object("resp_A")}).to_string(),
            json!({"type": "response.completed", "sequence_number": 1, "response": response_object("resp_A")}).to_string(),
        ],
        gap: Duration::from_millis(10),
    });
    let stream = app
        .post_json(
            "/v1/responses",
            r#"{"model":"a","input":"Hi","stream":true}"#,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(stream.contains("resp_A"));

    let get = |path: &str| app.http.get(app.url(path)).send();
    assert_eq!(
        get("/v1/responses/resp_B?include[]=x")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(other.last_request().uri, "/v1/responses/resp_B?include[]=x");
    assert_eq!(other.last_request().method, "GET");
    assert_eq!(
        other.last_request().header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(
        get("/v1/responses/resp_A/input_items?limit=2")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.upstream.last_request().uri,
        "/v1/responses/resp_A/input_items?limit=2"
    );
    let cancel = app
        .http
        .post(app.url("/v1/responses/resp_A/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    assert_eq!(
        app.upstream.last_request().uri,
        "/v1/responses/resp_A/cancel"
    );
    assert_eq!(app.upstream.last_request().method, "POST");
    let delete = app
        .http
        .delete(app.url("/v1/responses/resp_B"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(other.last_request().method, "DELETE");
    assert_eq!(app.upstream.requests().len(), 3);
    assert_eq!(other.requests().len(), 3);

    // Deleted, then never seen: 404 in the OpenAI shape, nothing goes upstream.
    for unknown in ["/v1/responses/resp_B", "/v1/responses/resp_nope"] {
        let error = assert_openai_error(get(unknown).await.unwrap(), 404).await;
        assert!(
            error["message"].as_str().unwrap().contains("resp_"),
            "{error}"
        );
    }
    assert_eq!(other.requests().len(), 3);
}

#[tokio::test]
async fn previous_response_id_sticks_to_the_pool_member_that_created_it() {
    let other = MockUpstream::start().await;
    // Model `m` is a pool of both upstreams; `only-second` is served by the second alone.
    let config = json!({"pool": {
        "api_key_variable": "TEST_PROVIDER_KEY",
        "request_timeout": 10,
        "models": {
            "m": {"endpoints": [
                {"path": "v1/responses", "target_model_name": "t", "target_base_url": "{UPSTREAM}"},
                {"path": "v1/responses", "target_model_name": "t", "target_base_url": other.url}
            ]},
            "only-second": {"endpoints": [
                {"path": "v1/responses", "target_model_name": "t", "target_base_url": other.url}
            ]}
        }
    }});
    let app = Spawn::new().file("pool.json", config).start().await;
    other.push(Reply::json(200, response_object("resp_second")));
    app.post_json("/v1/responses", r#"{"model":"only-second","input":"Hi"}"#)
        .await;
    assert_eq!(other.requests().len(), 1);

    for turn in 0..4 {
        let body = format!(
            r#"{{"model":"m","input":"turn {turn}","previous_response_id":"resp_second"}}"#
        );
        let response = app.post_json("/v1/responses", body).await;
        assert_eq!(response.status(), 200);
    }

    assert_eq!(other.requests().len(), 5);
    assert_eq!(app.upstream.requests().len(), 0);
    assert_eq!(
        other.last_request().json()["previous_response_id"],
        "resp_second"
    );
}
