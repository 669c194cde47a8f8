//! JSON endpoints: routing, the model rewrite, byte-exactness, keys and headers.
use async_openai::types::{
    CreateChatCompletionRequestArgs, CreateCompletionRequestArgs, CreateEmbeddingRequestArgs,
};
use serde_json::json;

use crate::helpers::{provider_file, spawn_app, MockUpstream, Reply, Spawn, PROVIDER_KEY};

#[tokio::test]
async fn chat_completion_through_async_openai_reaches_the_target_model() {
    let app = spawn_app().await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("m")
        .messages([
            async_openai::types::ChatCompletionRequestUserMessageArgs::default()
                .content("Hi")
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap();

    let response = app.openai().chat().create(request).await.unwrap();

    assert_eq!(response.model, "target-m");
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("Hello!")
    );
    let upstream = app.upstream.last_request();
    assert_eq!(upstream.method, "POST");
    assert_eq!(upstream.uri, "/v1/chat/completions");
    assert_eq!(upstream.json()["model"], "target-m");
    assert_eq!(upstream.json()["messages"][0]["content"], "Hi");
}

#[tokio::test]
async fn completions_and_embeddings_through_async_openai() {
    let app = spawn_app().await;
    let completion = app
        .openai()
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model("m")
                .prompt("Say")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(completion.model, "target-m");
    assert_eq!(app.upstream.last_request().uri, "/v1/completions");

    let embedding = app
        .openai()
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("m")
                .input("text")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(embedding.data[0].embedding, vec![0.25, -0.5, 1.0]);
    assert_eq!(app.upstream.last_request().uri, "/v1/embeddings");
    assert_eq!(app.upstream.last_request().json()["model"], "target-m");
}

#[tokio::test]
async fn every_byte_but_the_model_reaches_the_upstream_unchanged() {
    let app = spawn_app().await;
    let filler = "x".repeat(5 * 1024 * 1024);
    let body = format!(
        "{{ \"messages\" : [{{\"role\":\"user\",\"content\":\"caf\\u00e9 \u{1F600} {filler}\",\"model\":\"inner\"}}],\n\"temperature\": 0.1000000000000000055511151231257827, \"model\":  \"m\", \"z\": 1e400 , \"a\": -0.0}}"
    );
    // 1e400 overflows f64: the upstream decides what to do with it, not us.
    let body = body.replace(", \"z\": 1e400 ", "");

    let response = app.post_json("/v1/chat/completions", &body).await;

    assert_eq!(response.status(), 200);
    let expected = body.replace("\"model\":  \"m\"", "\"model\":  \"target-m\"");
    let received = app.upstream.last_request().body;
    assert_eq!(received.len(), expected.len());
    assert!(
        received == expected.as_bytes(),
        "body changed beyond the model"
    );
}

#[tokio::test]
async fn the_provider_key_goes_upstream_and_the_client_token_never_does() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-token")
        .header("cookie", "session=abc")
        .header("openai-beta", "assistants=v2")
        .header("idempotency-key", "idem-1")
        .header("user-agent", "llmux-test/1")
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let upstream = app.upstream.last_request();
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(upstream.header("cookie"), None);
    assert_eq!(upstream.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(upstream.header("idempotency-key"), Some("idem-1"));
    assert_eq!(upstream.header("user-agent"), Some("llmux-test/1"));
    assert_eq!(upstream.header("content-type"), Some("application/json"));
    assert!(upstream
        .headers
        .iter()
        .all(|(_, v)| !v.contains("client-token")));
}

#[tokio::test]
async fn the_upstream_gets_its_own_host_and_is_asked_for_identity() {
    // Issue 16: llmux writes both headers itself (awc built them per request); the values are
    // awc's, whatever the client sent.
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("host", "llmux.example")
        .header("accept-encoding", "gzip, br")
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let upstream = app.upstream.last_request();
    let mock_authority = app.upstream.url.trim_start_matches("http://");
    assert_eq!(upstream.header("host"), Some(mock_authority));
    assert_eq!(upstream.header("accept-encoding"), Some("identity"));
    let hosts = upstream.headers.iter().filter(|(n, _)| n == "host").count();
    assert_eq!(hosts, 1, "{:?}", upstream.headers);
}

#[tokio::test]
async fn without_a_key_variable_or_with_it_unset_no_authorization_goes_upstream() {
    let file = json!({
        "nokey": {"target_base_url": "{UPSTREAM}", "models": {"a": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "a"}]}}},
        "unset": {"api_key_variable": "LLMUX_TEST_NEVER_SET", "target_base_url": "{UPSTREAM}", "models": {"b": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "b"}]}}}
    });
    let app = Spawn::new().file("p.json", file).start().await;
    for model in ["a", "b"] {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .header("authorization", "Bearer client-token")
            .body(json!({"model": model, "messages": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            app.upstream.last_request().header("authorization"),
            None,
            "model {model}"
        );
    }
}

#[tokio::test]
async fn prefix_and_per_endpoint_base_urls_route_to_the_right_upstream() {
    let other = MockUpstream::start().await;
    let file = json!({
        "prov": {
            "prefix": "team/",
            "target_base_url": "{UPSTREAM}/",
            "models": {
                "chat": {"endpoints": [
                    {"path": "/v1/chat/completions", "target_model_name": "on-default"},
                    {"path": "v1/embeddings", "target_model_name": "on-other", "target_base_url": format!("{}/", other.url)}
                ]}
            }
        }
    });
    let app = Spawn::new().file("p.json", file).start().await;

    let chat = app
        .post_json("/v1/chat/completions", json!({"model": "team/chat"}))
        .await;
    let embed = app
        .post_json(
            "/v1/embeddings",
            json!({"model": "team/chat", "input": "x"}),
        )
        .await;
    let unprefixed = app
        .post_json("/v1/chat/completions", json!({"model": "chat"}))
        .await;

    assert_eq!(chat.status(), 200);
    assert_eq!(embed.status(), 200);
    assert_eq!(unprefixed.status(), 404);
    assert_eq!(app.upstream.last_request().json()["model"], "on-default");
    assert_eq!(other.last_request().uri, "/v1/embeddings");
    assert_eq!(other.last_request().json()["model"], "on-other");
}

#[tokio::test]
async fn request_ids_are_passed_on_or_generated() {
    let app = spawn_app().await;
    let given = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("x-request-id", "client-chosen-id")
        .body(r#"{"model":"m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-chosen-id");
    assert_eq!(
        app.upstream.last_request().header("x-request-id"),
        Some("client-chosen-id")
    );

    let generated = app
        .post_json("/v1/chat/completions", r#"{"model":"m"}"#)
        .await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"));
    assert_eq!(
        app.upstream.last_request().header("x-request-id"),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let app = spawn_app().await;
    app.upstream
        .always(Reply::json(500, json!({"error": {"message": "boom"}})));
    let failing = app
        .post_json("/v1/chat/completions", r#"{"model":"m"}"#)
        .await;
    assert_eq!(failing.status(), 500);
    assert_eq!(
        failing.json::<serde_json::Value>().await.unwrap()["error"]["message"],
        "boom"
    );

    let body = r#"{"error":{"message":"slow down","type":"rate_limit","code":"x"},"extra":[1,2]}"#;
    app.upstream.push(Reply::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: body.into(),
        // Above --max-retry-wait, so the 429 is not retried (issue #7) but passed through.
        headers: vec![("retry-after".into(), "70".into())],
    });

    let response = app
        .post_json("/v1/chat/completions", r#"{"model":"m"}"#)
        .await;

    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "70");
    assert_eq!(response.text().await.unwrap(), body);
}

#[tokio::test]
async fn every_json_endpoint_is_forwarded_to_its_path() {
    let paths = [
        "v1/chat/completions",
        "v1/completions",
        "v1/embeddings",
        "v1/moderations",
        "v1/images/generations",
        "v1/audio/speech",
        "v1/responses",
    ];
    let endpoints: Vec<_> = paths
        .iter()
        .map(|p| json!({"path": p, "target_model_name": "t"}))
        .collect();
    let file = json!({"p": {"target_base_url": "{UPSTREAM}", "models": {"all": {"endpoints": endpoints}}}});
    let app = Spawn::new().file("p.json", file).start().await;
    for path in paths.iter().chain(["v1/responses/input_tokens"].iter()) {
        let response = app
            .post_json(&format!("/{path}"), json!({"model": "all", "input": "x"}))
            .await;
        assert_eq!(response.status(), 200, "{path}");
        let upstream = app.upstream.last_request();
        assert_eq!(upstream.uri, format!("/{path}"));
        assert_eq!(upstream.json()["model"], "t");
    }
}

#[tokio::test]
async fn a_file_in_fast_openai_api_proxy_format_loads_unchanged() {
    // The example of fast-openai-api-proxy's README (comments removed), pointed at the mock.
    let seed = r#"{
  "openAI": {
    "api_key_variable": "TEST_PROVIDER_KEY",
    "prefix": "openai-",
    "target_base_url": "{UPSTREAM}",
    "request_timeout": 120,
    "health_timeout": 15,
    "models": {
      "gpt-4o": {
        "endpoints": [
          { "path": "v1/chat/completions", "target_model_name": "gpt-4o" },
          { "path": "v1/embeddings", "target_model_name": "text-embedding-ada-002", "request_timeout": 60 }
        ]
      },
      "dall-e-3": { "endpoints": [ { "path": "v1/images/generations", "target_model_name": "dall-e-3" } ] }
    }
  },
  "anotherProvider": {
    "api_key_variable": "ANOTHER_PROVIDER_KEY",
    "models": {
      "custom-model-chat": {
        "endpoints": [
          { "path": "v1/chat/completions", "target_base_url": "{UPSTREAM}", "target_model_name": "super-chat-model-v2" }
        ]
      }
    }
  }
}"#;
    let app = Spawn::new().file("openAI-example.json", seed).start().await;
    for (model, path, target) in [
        ("openai-gpt-4o", "/v1/chat/completions", "gpt-4o"),
        ("openai-gpt-4o", "/v1/embeddings", "text-embedding-ada-002"),
        ("openai-dall-e-3", "/v1/images/generations", "dall-e-3"),
        (
            "custom-model-chat",
            "/v1/chat/completions",
            "super-chat-model-v2",
        ),
    ] {
        let response = app.post_json(path, json!({"model": model})).await;
        assert_eq!(response.status(), 200, "{model} {path}");
        assert_eq!(app.upstream.last_request().json()["model"], target);
    }
    let _ = provider_file; // the helper format is covered by every other test
}

#[tokio::test]
async fn responses_compact_is_forwarded_like_responses_not_a_405() {
    // Issue 12: `/v1/responses/{id}` swallowed `/v1/responses/compact`.
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/responses/compact",
            json!({"model": "m", "input": "a long conversation"}),
        )
        .await;

    assert_eq!(response.status(), 200);
    let upstream = app.upstream.last_request();
    assert_eq!(upstream.uri, "/v1/responses/compact");
    assert_eq!(upstream.json()["model"], "target-m");
}

/// An upstream that answers every request on one connection with `head` and a tiny JSON body,
/// written by hand: actix will not send a `Connection` header naming other headers.
async fn raw_upstream(head: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                // Reads the head and the (small) body the test sends, then answers.
                while !String::from_utf8_lossy(&seen).contains("}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => seen.extend_from_slice(&buffer[..read]),
                    }
                }
                let body = r#"{"ok":true}"#;
                let answer = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn response_headers_named_by_the_upstream_connection_header_stay_behind() {
    // Issue 12: the response side only checked a static list of hop-by-hop headers.
    let url = raw_upstream(
        "HTTP/1.1 200 OK\r\nconnection: close, x-upstream-hop\r\nx-upstream-hop: secret\r\n\
         x-kept: yes\r\ncontent-type: application/json\r\n",
    )
    .await;
    let file = json!({"p": {"target_base_url": url,
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}});
    let app = Spawn::new().file("p.json", file).start().await;

    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kept"], "yes");
    assert!(!response.headers().contains_key("x-upstream-hop"));
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
}

#[tokio::test]
async fn an_upstream_s_own_llmux_headers_never_reach_the_client_beside_llmux_s() {
    // Issue 16: llmux appends `x-llmux-attempts` (and `x-llmux-upstream` when shown) without
    // looking for one first, so the upstream's own values of those names must stay behind, or the
    // client would get two.
    use llmux::pipeline::attempt::UpstreamHeader;
    let reply = Reply::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: json!({"id": "c", "object": "chat.completion", "choices": []}).to_string(),
        headers: vec![
            ("x-llmux-attempts".to_owned(), "7".to_owned()),
            (
                "x-llmux-upstream".to_owned(),
                "inner/secret@10.0.0.7:8000".to_owned(),
            ),
            ("x-request-id".to_owned(), "req_provider_1".to_owned()),
        ],
    };
    let values = |response: &reqwest::Response, name: &str| -> Vec<String> {
        let values = response.headers().get_all(name).iter();
        values.map(|v| v.to_str().unwrap().to_owned()).collect()
    };
    let app = spawn_app().await;
    app.upstream.always(reply.clone());

    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(values(&response, "x-llmux-attempts"), ["1"]);
    assert!(values(&response, "x-llmux-upstream").is_empty());
    assert_eq!(
        values(&response, "x-upstream-request-id"),
        ["req_provider_1"]
    );

    let app = Spawn::new()
        .file("p.json", provider_file("mock", "", &[("m", "target-m")]))
        .args(|args| args.upstream_header = UpstreamHeader::Name)
        .start()
        .await;
    app.upstream.always(reply);
    let response = app
        .post_json("/v1/chat/completions", json!({"model": "m"}))
        .await;
    assert_eq!(values(&response, "x-llmux-attempts"), ["1"]);
    assert_eq!(values(&response, "x-llmux-upstream"), ["mock/target-m"]);
}
