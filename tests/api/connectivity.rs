//! Upstream connectivity: private CAs, client certificates, the egress proxy, HTTP/2 (issue 15).
use std::path::Path;
use std::time::Duration;

use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use llmux::config::load::{parse_file, FileLoad};
use llmux::routing::endpoint::Endpoint;
use llmux::upstream::Upstream;
use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, Spawn, TestApp};
use crate::tls_mock::{ConnectProxy, TestPki, TlsMock};

/// A provider `tls-p` serving model `m` (target `target-m`) at `url`, with `tls` settings if any.
fn tls_provider(url: &str, tls: Option<Value>) -> Value {
    let mut provider = json!({
        "api_key_variable": "TEST_PROVIDER_KEY",
        "target_base_url": url,
        "request_timeout": 10,
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "target-m"}]}}
    });
    if let Some(tls) = tls {
        provider["tls"] = tls;
    }
    json!({ "tls-p": provider })
}

async fn chat(app: &TestApp) -> Result<String, async_openai::error::OpenAIError> {
    let request = CreateChatCompletionRequestArgs::default()
        .model("m")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hi")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let response = app.openai().chat().create(request).await?;
    assert_eq!(response.model, "target-m");
    Ok(response.choices[0]
        .message
        .content
        .clone()
        .unwrap_or_default())
}

#[tokio::test]
async fn an_upstream_behind_a_private_ca_is_refused_without_the_bundle_and_served_with_it() {
    let pki = TestPki::new("internal");
    let upstream = TlsMock::start(&pki.server("vllm")).await;

    let without = Spawn::new()
        .file("p.json", tls_provider(&upstream.url, None))
        .start()
        .await;
    let refused = without
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        )
        .await;
    let error = assert_openai_error(refused, 502).await;
    assert!(
        error["message"].as_str().unwrap().contains("tls-p"),
        "{error}"
    );
    assert_eq!(upstream.request_count(), 0);

    let ca_file = pki.ca_file.clone();
    let with = Spawn::new()
        .file("p.json", tls_provider(&upstream.url, None))
        .args(move |args| args.upstream_ca_file = Some(ca_file))
        .start()
        .await;
    let content = chat(&with).await.unwrap();
    // The mock answers with the HTTP version it was spoken to in: HTTP/2 by ALPN.
    assert_eq!(content, "HTTP/2.0");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn concurrent_requests_share_one_http2_connection() {
    let pki = TestPki::new("h2");
    let upstream = TlsMock::start(&pki.server("h2-backend")).await;
    let ca_file = pki.ca_file.clone();
    let app = Spawn::new()
        .file("p.json", tls_provider(&upstream.url, None))
        .args(move |args| {
            args.upstream_ca_file = Some(ca_file);
            // One worker: one upstream client, one connection pool.
            args.workers = Some(1);
        })
        .start()
        .await;
    // The first request opens the connection; the others find it in the pool.
    assert_eq!(chat(&app).await.unwrap(), "HTTP/2.0");

    let requests = (0..40).map(|_| {
        app.post_json(
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        )
    });
    let started = std::time::Instant::now();
    let responses = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("40 concurrent requests finish within 20s");

    assert!(responses.iter().all(|r| r.status() == 200));
    // The mock holds each answer 50 ms: one after the other would take 2 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the streams did not overlap: {:?}",
        started.elapsed()
    );
    let versions = upstream.versions();
    assert_eq!(versions.len(), 41);
    assert!(versions.iter().all(|v| v == "HTTP/2.0"), "{versions:?}");
    assert_eq!(upstream.connections(), 1, "every stream on one connection");
}

#[tokio::test]
async fn https_upstreams_are_reached_through_the_egress_proxy_by_connect() {
    let pki = TestPki::new("egress");
    let upstream = TlsMock::start(&pki.server("behind-proxy")).await;
    let proxy = ConnectProxy::start().await;
    let ca_file = pki.ca_file.clone();
    let proxied_url = proxy.url.replace("http://", "http://llmux:pa%40ss@");
    let app = Spawn::new()
        .file("p.json", tls_provider(&upstream.url, None))
        .env("HTTPS_PROXY", &proxied_url)
        .args(move |args| {
            args.upstream_ca_file = Some(ca_file);
            // One worker, one pool: the second request reuses the first one's tunnel.
            args.workers = Some(1);
        })
        .start()
        .await;

    assert_eq!(chat(&app).await.unwrap(), "HTTP/2.0");
    assert_eq!(chat(&app).await.unwrap(), "HTTP/2.0");

    // TLS (and h2) run inside the tunnel; the kept-alive connection is reused.
    assert_eq!(proxy.tunnels(), 1);
    assert_eq!(proxy.targets(), [format!("127.0.0.1:{}", upstream.port)]);
    assert_eq!(proxy.authorizations(), ["Basic bGxtdXg6cGFAc3M="]);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let pki = TestPki::new("direct");
    let upstream = TlsMock::start(&pki.server("direct")).await;
    let proxy = ConnectProxy::start().await;
    let ca_file = pki.ca_file.clone();
    let app = Spawn::new()
        .file("p.json", tls_provider(&upstream.url, None))
        .env("HTTPS_PROXY", &proxy.url)
        .env("NO_PROXY", "localhost, 127.0.0.1")
        .args(move |args| args.upstream_ca_file = Some(ca_file))
        .start()
        .await;

    assert_eq!(chat(&app).await.unwrap(), "HTTP/2.0");
    assert_eq!(proxy.tunnels(), 0);
}

#[tokio::test]
async fn an_egress_proxy_that_refuses_is_a_502_naming_the_provider() {
    // Nothing listens on the proxy's port once it is dropped.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = Spawn::new()
        .file("p.json", tls_provider("https://127.0.0.1:9", None))
        .env("HTTPS_PROXY", &format!("http://127.0.0.1:{port}"))
        .start()
        .await;
    let response = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        )
        .await;
    let error = assert_openai_error(response, 502).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("tls-p") && message.contains("egress proxy"),
        "{message}"
    );
}

// Below: per-provider settings, through the loader and the per-worker clients the attempt stage
// picks from (`UpstreamClients::for_endpoint`).

fn load(dir: &Path, config: Value) -> FileLoad {
    let file = dir.join("p.json");
    let text = serde_json::to_string_pretty(&config).unwrap();
    std::fs::write(&file, &text).unwrap();
    parse_file(&file, &text, &|_| None)
}

fn endpoint_of(dir: &Path, config: Value) -> Endpoint {
    let loaded = load(dir, config);
    assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.problems);
    loaded.endpoints.unwrap().remove(0)
}

async fn get(client: &awc::Client, url: &str) -> Result<Value, String> {
    let mut response = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    response.json::<Value>().await.map_err(|e| e.to_string())
}

fn upstream() -> Upstream {
    Upstream::new(Duration::from_secs(5), None, &|_| None).unwrap()
}

#[actix_web::test]
async fn a_provider_ca_file_is_trusted_for_that_provider_only() {
    let pki = TestPki::new("provider");
    let mock = TlsMock::start(&pki.server("tei")).await;
    // Relative to the config file's dir.
    let endpoint = endpoint_of(
        pki.path(),
        tls_provider(&mock.url, Some(json!({"ca_file": "ca.pem"}))),
    );
    let clients = upstream().clients();

    let answer = get(&clients.for_endpoint(&endpoint), &mock.url)
        .await
        .unwrap();
    assert_eq!(answer["version"], "HTTP/2.0");
    let error = get(&clients.default_client(), &mock.url).await.unwrap_err();
    assert!(
        error.to_lowercase().contains("certificate")
            || error.contains("tls")
            || error.contains("connect"),
        "{error}"
    );
}

#[actix_web::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let pki = TestPki::new("mtls");
    let mock = TlsMock::start_with(&pki.server("mtls-backend"), Some(&pki)).await;
    let client = pki.client("llmux");
    let with_cert = endpoint_of(
        pki.path(),
        tls_provider(
            &mock.url,
            Some(json!({
                "ca_file": pki.ca_file,
                "client_cert_file": client.cert_file,
                "client_key_file": client.key_file,
            })),
        ),
    );
    let without_cert = endpoint_of(
        pki.path(),
        tls_provider(&mock.url, Some(json!({"ca_file": "ca.pem"}))),
    );
    assert_ne!(
        with_cert.tls.as_ref().unwrap().profile,
        without_cert.tls.as_ref().unwrap().profile
    );
    let clients = upstream().clients();

    assert!(get(&clients.for_endpoint(&without_cert), &mock.url)
        .await
        .is_err());
    assert_eq!(mock.request_count(), 0);
    let answer = get(&clients.for_endpoint(&with_cert), &mock.url)
        .await
        .unwrap();
    assert_eq!(answer["version"], "HTTP/2.0");
    assert_eq!(mock.request_count(), 1);
    // Debug output names the files, never the key.
    let key_pem = std::fs::read_to_string(&client.key_file).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!format!("{with_cert:?}").contains(key_body));
}

#[actix_web::test]
async fn endpoints_with_equal_tls_settings_share_one_client() {
    let pki = TestPki::new("shared");
    let mock = TlsMock::start(&pki.server("shared")).await;
    let tls = json!({"ca_file": "ca.pem"});
    let first = endpoint_of(pki.path(), tls_provider(&mock.url, Some(tls.clone())));
    let second = endpoint_of(pki.path(), tls_provider(&mock.url, Some(tls)));
    let clients = upstream().clients();
    get(&clients.for_endpoint(&first), &mock.url).await.unwrap();
    get(&clients.for_endpoint(&second), &mock.url)
        .await
        .unwrap();
    // One client, one pool: the second request reused the first one's connection.
    assert_eq!(mock.connections(), 1);
    assert!(first.same_config(&second));
}

fn check_error(dir: &Path, tls: Value, json_path: &str, needle: &str) {
    let loaded = load(dir, tls_provider("https://127.0.0.1:9", Some(tls)));
    assert!(loaded.endpoints.is_none(), "the file should fail");
    let error = loaded
        .errors()
        .find(|e| e.json_path == json_path)
        .unwrap_or_else(|| panic!("no error at {json_path}: {:?}", loaded.problems));
    assert!(error.message.contains(needle), "{error}");
    // A position in the file, on the key's line.
    let position = error.position.expect("a position");
    let text = std::fs::read_to_string(dir.join("p.json")).unwrap();
    let line = text.lines().nth(position.line - 1).unwrap();
    let key = json_path.rsplit('.').next().unwrap();
    assert!(line.contains(key), "line {}: {line}", position.line);
}

#[test]
fn unreadable_or_invalid_pem_files_are_config_errors_at_their_key() {
    let pki = TestPki::new("errors");
    let client = pki.client("c");
    std::fs::write(pki.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let dir = pki.path();
    check_error(
        dir,
        json!({"ca_file": "missing.pem"}),
        "tls-p.tls.ca_file",
        "cannot read",
    );
    check_error(
        dir,
        json!({"ca_file": "garbage.pem"}),
        "tls-p.tls.ca_file",
        "holds no PEM certificate",
    );
    check_error(
        dir,
        json!({"client_cert_file": client.cert_file}),
        "tls-p.tls.client_cert_file",
        "needs client_key_file",
    );
    // A key where the certificate belongs, and the reverse.
    check_error(
        dir,
        json!({"client_cert_file": client.key_file, "client_key_file": client.cert_file}),
        "tls-p.tls.client_cert_file",
        "holds no PEM certificate",
    );
    check_error(
        dir,
        json!({"client_cert_file": client.cert_file, "client_key_file": client.cert_file}),
        "tls-p.tls.client_key_file",
        "holds no PEM private key",
    );
    // Messages never quote a key.
    let loaded = load(
        dir,
        tls_provider(
            "https://127.0.0.1:9",
            Some(
                json!({"ca_file": client.key_file, "client_cert_file": client.key_file, "client_key_file": client.key_file}),
            ),
        ),
    );
    let key_pem = std::fs::read_to_string(&client.key_file).unwrap();
    for problem in &loaded.problems {
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!problem.message.contains(line), "{problem}");
        }
    }
}

#[test]
fn an_unusable_global_ca_file_stops_start_up_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.pem");
    std::fs::write(
        &file,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let error = Upstream::new(Duration::from_secs(1), Some(&file), &|_| None).unwrap_err();
    assert!(error.contains("bundle.pem"), "{error}");
    let error = Upstream::new(
        Duration::from_secs(1),
        Some(&dir.path().join("none.pem")),
        &|_| None,
    )
    .unwrap_err();
    assert!(error.contains("cannot read"), "{error}");
    let proxy_env = |name: &str| (name == "HTTPS_PROXY").then(|| "https://proxy:443".to_owned());
    let error = Upstream::new(Duration::from_secs(1), None, &proxy_env).unwrap_err();
    assert!(error.contains("HTTPS_PROXY"), "{error}");
}

#[tokio::test]
async fn provider_tls_settings_serve_requests_and_health_probes_end_to_end() {
    let pki = TestPki::new("e2e");
    let mock = TlsMock::start_with(&pki.server("e2e-backend"), Some(&pki)).await;
    let client = pki.client("llmux-e2e");
    let mut config = tls_provider(
        &mock.url,
        Some(json!({
            "ca_file": pki.ca_file,
            "client_cert_file": client.cert_file,
            "client_key_file": client.key_file,
        })),
    );
    config["tls-p"]["health_path"] = json!("v1/models");
    let app = Spawn::new().file("p.json", config).start().await;

    // The attempt stage picks the provider's client: its CA and its client certificate.
    assert_eq!(chat(&app).await.unwrap(), "HTTP/2.0");
    let health = app.http.get(app.url("/health/m")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["endpoints"][0]["status"], "up", "{health}");
}
