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
