//! The binary: `llmux check` and start-up errors.
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, Binary};

fn llmux() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmux"))
}

#[test]
fn check_prints_the_table_and_key_status_but_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = json!({"prov": {"api_key_variable": "LLMUX_CHECK_KEY", "prefix": "p-", "target_base_url": "http://127.0.0.1:9",
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t", "request_timeout": 5}]}}},
        "other": {"api_key_variable": "LLMUX_CHECK_UNSET", "target_base_url": "https://example.invalid/base",
        "models": {"n": {"endpoints": [{"path": "v1/embeddings", "target_model_name": "e"}]}}}});
    std::fs::write(dir.path().join("a.json"), file.to_string()).unwrap();

    let output = llmux()
        .args(["check", "--config-dir"])
        .arg(dir.path())
        .env("LLMUX_CHECK_KEY", "sk-do-not-print")
        .env_remove("LLMUX_CHECK_UNSET")
        .output()
        .unwrap();

    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("p-m"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:9/v1/chat/completions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("LLMUX_CHECK_KEY") && stdout.contains(" set"),
        "{stdout}"
    );
    assert!(stdout.contains("UNSET"), "{stdout}");
    assert!(stdout.contains("5s/60s"), "{stdout}");
    assert!(!stdout.contains("sk-do-not-print"), "{stdout}");
}

#[test]
fn check_exits_1_and_points_at_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        "{\n  \"p\": {\n    \"target_base_url\": \"ftp://x\",\n    \"models\": {}\n  }\n}",
    )
    .unwrap();

    let output = llmux()
        .args(["check", "--config-dir"])
        .arg(dir.path())
        .output()
        .unwrap();

    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bad.json:3:5: error"), "{stdout}");
    assert!(stdout.contains("p.target_base_url"), "{stdout}");
}

#[test]
fn a_missing_config_dir_is_a_clear_startup_error() {
    let output = llmux()
        .args(["--config-dir", "/definitely/not/here", "--port", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("/definitely/not/here") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_setting_with_its_env_var() {
    let output = llmux().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--config-dir",
        "LLMUX_CONFIG_DIR",
        "--host",
        "LLMUX_HOST",
        "--port",
        "LLMUX_PORT",
        "--base-url",
        "LLMUX_BASE_URL",
        "--log",
        "LLMUX_LOG",
        "--workers",
        "LLMUX_WORKERS",
        "--max-body-bytes",
        "LLMUX_MAX_BODY_BYTES",
        "--connect-timeout",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[tokio::test]
async fn a_final_upstream_failure_writes_one_warn_line() {
    // Issue 12: the attempt loop and the final answer both warned about the same failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = json!({"p": {"target_base_url": format!("http://127.0.0.1:{closed}"), "max_retries": 0,
        "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}});
    std::fs::write(dir.path().join("p.json"), file.to_string()).unwrap();
    let llmux = Binary::start(dir.path(), &[], &[]).await;

    let response = reqwest::Client::new()
        .post(llmux.url("/v1/chat/completions"))
        .header("x-request-id", "req-one-warn")
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 502);
    eventually(Duration::from_secs(10), "the access log line", || async {
        let lines = llmux.lines_with("req-one-warn");
        lines
            .iter()
            .any(|l| l.contains(r#""status":502"#))
            .then_some(())
    })
    .await;
    let warnings: Vec<String> = llmux
        .lines_with("req-one-warn")
        .into_iter()
        .filter(|line| line.contains(r#""level":40"#))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}

#[test]
fn a_bad_log_filter_is_reported_once_naming_the_flag() {
    // Issue 20: the message came twice and did not say which setting was wrong.
    let dir = tempfile::tempdir().unwrap();
    let output = llmux()
        .args(["--log", "llmux=loud", "--port", "0", "--config-dir"])
        .arg(dir.path())
        .output()
        .unwrap();

    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--log"), "{stderr}");
    assert_eq!(stderr.matches("llmux=loud").count(), 1, "{stderr}");
}
