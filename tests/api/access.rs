//! Access control (issue 18): client keys in `llmux_access` sections of config files, the
//! `llmux keys new` and `llmux check` commands, and start-up on broken key files.
use std::process::Command;
use std::sync::Arc;

use llmux::cli::ServeArgs;
use llmux::startup::{Application, EnvSource};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn llmux() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmux"))
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `llmux keys new` with `args`; returns the key it minted and the entry it printed.
fn mint(args: &[&str]) -> (String, Value) {
    let output = llmux().args(["keys", "new"]).args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    let key = stdout
        .split_whitespace()
        .find(|word| word.starts_with("llmux_") && word.len() == 38)
        .unwrap_or_else(|| panic!("no key in {stdout}"))
        .to_owned();
    let entry = serde_json::from_str(stdout.lines().last().unwrap().trim()).unwrap();
    (key, entry)
}

fn check(dir: &std::path::Path) -> (Option<i32>, String) {
    let output = llmux()
        .args(["check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn keys_new_mints_a_key_whose_entry_check_lists_without_the_key_or_its_digest() {
    let (key, entry) = mint(&["--name", "ci-bot", "--owner", "team-a"]);
    assert_eq!(entry["key_sha256"], sha256_hex(&key));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"llmux_access": {"keys": [entry]}}).to_string(),
    )
    .unwrap();

    let (code, stdout) = check(dir.path());

    assert_eq!(code, Some(0), "{stdout}");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("ci-bot"))
        .unwrap_or_else(|| panic!("no key row in {stdout}"));
    assert!(row.contains("team-a") && row.contains("active"), "{row}");
    let digest = sha256_hex(&key);
    assert!(row.contains(&format!("{}…", &digest[..8])), "{row}");
    assert!(!stdout.contains(&digest[..12]), "{stdout}");
    assert!(!stdout.contains(&key), "{stdout}");
    assert!(stdout.contains("0 errors, 0 warnings"), "{stdout}");
}

#[test]
fn check_fails_on_a_key_digest_declared_in_two_files_naming_both() {
    let (_, entry) = mint(&["--name", "first"]);
    let mut second = entry.clone();
    second["name"] = json!("second");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        json!({"llmux_access": {"keys": [entry]}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        json!({"llmux_access": {"keys": [second]}}).to_string(),
    )
    .unwrap();

    let (code, stdout) = check(dir.path());

    assert_eq!(code, Some(1), "{stdout}");
    let error = stdout
        .lines()
        .find(|line| line.contains("same key_sha256"))
        .unwrap_or_else(|| panic!("no duplicate error in {stdout}"));
    assert!(error.contains("b.json:1:"), "{error}");
    assert!(error.contains("key `first` at "), "{error}");
    assert!(error.contains("a.json:1:"), "{error}");
}

#[test]
fn a_provider_file_may_hold_the_access_section_and_its_routes_load_unchanged() {
    let (_, entry) = mint(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = json!({
        "prov": {"target_base_url": "http://127.0.0.1:9", "models": {"m": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}},
        "llmux_access": {"keys": [entry], "quota_policies": [{"api_path": "/v1/*", "window_type": "day", "request_limit": 10}]}
    });
    std::fs::write(dir.path().join("all.json"), file.to_string()).unwrap();

    let (code, stdout) = check(dir.path());

    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:9/v1/chat/completions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 routes, 0 errors, 0 warnings"),
        "{stdout}"
    );
}

#[test]
fn check_points_at_a_bad_key_entry_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        "{\"llmux_access\": {\"keys\": [\n  {\"name\": \"oops\", \"key_sha256\": \"llmux_pasted_the_key_itself\"}]}}",
    )
    .unwrap();

    let (code, stdout) = check(dir.path());

    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("keys.json:2:20: error: key_sha256 must be 64 hex digits"),
        "{stdout}"
    );
    assert!(!stdout.contains("llmux_pasted_the_key_itself"), "{stdout}");
}

fn build(dir: &std::path::Path, edit: impl FnOnce(&mut ServeArgs)) -> anyhow::Result<Application> {
    let mut args = ServeArgs::new(dir);
    edit(&mut args);
    let env: EnvSource = Arc::new(|_| None);
    Application::build_with_env(args, env)
}

#[tokio::test]
async fn an_unparsable_key_file_at_start_up_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        "{\"llmux_access\": {\"keys\": [{\"name\": \"k\"}]}}",
    )
    .unwrap();

    let error = build(dir.path(), |_| {}).err().expect("start-up fails");

    let message = format!("{error:#}");
    assert!(message.contains("keys.json"), "{message}");
    assert!(message.contains("key_sha256"), "{message}");
    assert!(message.contains("does not start"), "{message}");
}

#[tokio::test]
async fn with_access_control_off_a_broken_key_file_does_not_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.json"), "{\"llmux_access\": 5}").unwrap();

    let built = build(dir.path(), |args| {
        args.access_control = llmux::access::AccessMode::Off;
    });

    assert!(built.is_ok());
}

#[tokio::test]
async fn an_unreadable_admin_token_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::new(dir.path());
    args.port = 0;
    let env: EnvSource = Arc::new(|name| {
        (name == "LLMUX_ADMIN_TOKEN_FILE").then(|| "/nonexistent/llmux-admin-token".to_owned())
    });

    let error = Application::build_with_env(args, env)
        .err()
        .expect("start-up fails");

    let message = format!("{error:#}");
    assert!(
        message.contains("/nonexistent/llmux-admin-token"),
        "{message}"
    );
}
