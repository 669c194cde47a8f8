//! `llmux check` on hostile config dirs (issue 20): no panic, every problem, skipped entries named,
//! linear in the number of models.
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

fn check(dir: &std::path::Path) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn one_model(name: &str) -> serde_json::Value {
    json!({"p": {"target_base_url": "http://127.0.0.1:9",
        "models": {name: {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}}})
}

#[test]
fn check_prints_a_table_with_a_70000_character_model_name_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let long = "m".repeat(70_000);
    std::fs::write(dir.path().join("a.json"), one_model(&long).to_string()).unwrap();

    let (output, stdout) = check(dir.path());

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&long));
    assert!(
        stdout.contains("1 files, 1 routes, 0 errors"),
        "{}",
        &stdout[stdout.len() - 200..]
    );
}

#[test]
fn check_reports_every_type_error_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        "{\"p\": {\"target_base_url\": \"http://h\", \"request_timeout\": \"slow\",\n\"models\": {\"m\": {\"endpoints\": [{\"path\": 1, \"target_model_name\": \"t\"}]}}},\n\"q\": {\"models\": {\"n\": {\"endpoints\": [{\"path\": \"v1/x\"}]}}}}",
    )
    .unwrap();

    let (output, stdout) = check(dir.path());

    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for (position, path) in [
        ("a.json:1:", "(at p.request_timeout)"),
        ("a.json:2:", "(at p.models.m.endpoints[0].path)"),
        ("a.json:3:", "(at q.models.n.endpoints[0])"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(position) && l.contains(path)),
            "{position} {path} in {stdout}"
        );
    }
    assert!(stdout.contains("3 errors"), "{stdout}");
}

#[test]
fn check_warns_about_dangling_symlinks_loops_directories_and_fifos_named_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    std::fs::write(path.join("good.json"), one_model("m").to_string()).unwrap();
    std::os::unix::fs::symlink(path.join("gone.json.target"), path.join("dangling.json")).unwrap();
    std::os::unix::fs::symlink(path.join("loop-b.json"), path.join("loop-a.json")).unwrap();
    std::os::unix::fs::symlink(path.join("loop-a.json"), path.join("loop-b.json")).unwrap();
    std::fs::create_dir(path.join("folder.json")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(path.join("pipe.json"))
        .status()
        .unwrap();
    assert!(fifo.success());

    let (output, stdout) = check(path);

    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for (name, reason) in [
        ("dangling.json", "dangling"),
        ("loop-a.json", "symlink loop"),
        ("loop-b.json", "symlink loop"),
        ("folder.json", "directory"),
        ("pipe.json", "FIFO"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(name) && l.contains("warning") && l.contains(reason)),
            "{name}: {reason} in {stdout}"
        );
    }
    assert!(
        stdout.contains("1 files, 1 routes, 0 errors, 5 warnings"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_credentials_in_a_url_without_printing_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = one_model("m").to_string().replace(
        "http://127.0.0.1:9",
        "https://user:s3cr3t-in-url@example.invalid",
    );
    std::fs::write(dir.path().join("a.json"), file).unwrap();

    let (output, stdout) = check(dir.path());

    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("api_key_variable"), "{stdout}");
    assert!(!stdout.contains("s3cr3t-in-url"), "{stdout}");
}

#[test]
fn check_loads_100000_models_in_linear_time() {
    // Issue 20: loading was quadratic (30k models: 7 s in release; 500k never finished).
    let dir = tempfile::tempdir().unwrap();
    let models: serde_json::Map<String, serde_json::Value> = (0..100_000)
        .map(|i| {
            (
                format!("model-{i}"),
                json!({"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}),
            )
        })
        .collect();
    let file = json!({"p": {"target_base_url": "http://127.0.0.1:9", "models": models}});
    std::fs::write(dir.path().join("big.json"), file.to_string()).unwrap();

    let started = Instant::now();
    let (output, stdout) = check(dir.path());
    let took = started.elapsed();

    assert_eq!(output.status.code(), Some(0));
    assert!(stdout.ends_with("1 files, 100000 routes, 0 errors, 0 warnings\n"));
    // Quadratic loading takes minutes here even in release; linear takes seconds in debug.
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
