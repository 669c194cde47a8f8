//! Log lines through the real subscriber (issue 12): no field may repeat a bunyan core key.
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use llmux::config::watch::{LiveConfig, Scope};
use llmux::routing::table::RoutingTable;
use llmux::startup::EnvSource;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The keys of a JSON object line, in order, duplicates kept (serde_json's maps drop them).
fn keys_of(line: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Keys>(line)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
        .0
}

#[test]
fn config_problem_lines_have_no_duplicate_keys() {
    // Regression (issue 12): config-problem lines had the key `file` twice.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), "{\"p\": {\"models\": 3}}").unwrap();
    std::fs::write(
        dir.path().join("warn.json"),
        r#"{"p": {"target_base_url": "http://127.0.0.1:9", "api_key_variable": "UNSET_VARIABLE", "typo": 1,
            "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing"), dir.path().join("dangling.json"))
        .unwrap();
    let buffer = Buffer::default();
    let subscriber = llmux::telemetry::subscriber("test", "debug", buffer.clone()).unwrap();
    let env: EnvSource = Arc::new(|_: &str| None);
    let live = LiveConfig::new(dir.path(), Arc::new(RoutingTable::new()), env);

    tracing::subscriber::with_default(subscriber, || {
        live.reload_and_log(Scope::Full, "test");
    });

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "{text}");
    for line in &lines {
        let keys = keys_of(line);
        let mut seen = HashSet::new();
        for key in &keys {
            assert!(seen.insert(key), "key `{key}` twice in {line}");
        }
    }
    for needle in [
        "config error",
        "config warning: unknown key",
        "skipped",
        "UNSET_VARIABLE",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(text.contains("\"config_file\""), "{text}");
}

#[tokio::test]
async fn a_proxied_requests_access_line_has_every_field_once_in_its_order() {
    // Issue 16: the access line's fields are rendered ahead (`telemetry::LineFields`) rather
    // than logged one by one; the line read by a client of the logs must not change.
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::helpers::MockUpstream::start().await;
    let provider = crate::helpers::provider_file("mock", "", &[("m", "target-m")])
        .to_string()
        .replace("{UPSTREAM}", &upstream.url);
    std::fs::write(dir.path().join("provider.json"), provider).unwrap();
    let binary =
        crate::helpers::Binary::start(dir.path(), &[], &[("TEST_PROVIDER_KEY", "sk-up")]).await;

    let response = reqwest::Client::new()
        .post(binary.url("/v1/chat/completions"))
        .header("x-request-id", "req-access-line")
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let (line, _) = crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "the access line",
        || {
            let line = binary
                .lines_with("\"req-access-line\"")
                .into_iter()
                .find(|l| l.contains("\"llmux::access\""));
            async move { line }
        },
    )
    .await;
    let keys = keys_of(&line);
    let expected = [
        "v",
        "name",
        "msg",
        "level",
        "hostname",
        "pid",
        "time",
        "target",
        "line",
        "file",
        "request_id",
        "method",
        "path",
        "model",
        "provider",
        "target_model",
        "upstream_host",
        "status",
        "duration_ms",
        "ttfb_ms",
        "prompt_tokens",
        "completion_tokens",
        "tokens_estimated",
        "stream",
        "bytes",
        "outcome",
        "client",
        "attempts",
    ];
    assert_eq!(keys, expected, "{line}");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["msg"], "request");
    assert_eq!(line["level"], 30);
    assert_eq!(line["request_id"], "req-access-line");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "v1/chat/completions");
    assert_eq!(line["model"], "m");
    assert_eq!(line["provider"], "mock");
    assert_eq!(line["target_model"], "target-m");
    assert_eq!(line["status"], 200);
    assert_eq!(line["prompt_tokens"], 5);
    assert_eq!(line["completion_tokens"], 2);
    assert_eq!(line["tokens_estimated"], false);
    assert_eq!(line["stream"], false);
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["attempts"], 1);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
    let client = line["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
}

#[tokio::test]
async fn access_lines_carry_a_clients_request_id_escaped_and_one_line_per_request() {
    // Issue 16: the request id is copied into the line as it is only when nothing in it needs
    // escaping, and the binary writes its lines to stdout without `std::io::Stdout`.
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::helpers::MockUpstream::start().await;
    let provider = crate::helpers::provider_file("mock", "", &[("m", "target-m")])
        .to_string()
        .replace("{UPSTREAM}", &upstream.url);
    std::fs::write(dir.path().join("provider.json"), provider).unwrap();
    let binary =
        crate::helpers::Binary::start(dir.path(), &[], &[("TEST_PROVIDER_KEY", "sk-up")]).await;

    let ids = [r#"req-"quoted"\back"#, "req-plain-0123456789abcdef", "x"];
    let client = reqwest::Client::new();
    for id in ids {
        let response = client
            .post(binary.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .json(
                &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-request-id"], id);
        response.bytes().await.unwrap();
    }

    let (lines, _) = crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "three access lines",
        || {
            let lines: Vec<String> = binary
                .lines_with("\"llmux::access\"")
                .into_iter()
                .filter(|line| line.contains(r#""path":"v1/chat/completions""#))
                .collect();
            async move { (lines.len() >= 3).then_some(lines) }
        },
    )
    .await;
    let logged: Vec<String> = lines
        .iter()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["provider"], "mock", "{line}");
            line["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(logged, ids);
}
