//! `/metrics` as Prometheus' tooling reads it (issue 20): `promtool check metrics` passes.
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::{spawn_app, Reply};

#[tokio::test]
async fn promtool_check_metrics_passes_on_a_scrape_after_traffic() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Echo);
    let answered = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        )
        .await;
    assert_eq!(answered.status(), 200);
    app.post_json("/v1/chat/completions", json!({"model": "nope"}))
        .await;

    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for name in [
        "process_start_time_seconds ",
        "process_max_fds ",
        "llmux_build_info{",
        "llmux_requests_total{",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }

    // Debian's `prometheus` package; .ci/run installs it when missing.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
