//! The status page (`/`, `/status`) and `/status.json`, the page checked in headless Chromium.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Spawn, TestApp};

/// A demo model next to a file broken on its third line.
async fn app_with_a_broken_file() -> TestApp {
    let app = Spawn::new()
        .file(
            "demo.json",
            json!({"demo": {"target_base_url": "builtin:demo", "prefix": "demo/",
                "models": {"chat": {"endpoints": [
                    {"path": "v1/chat/completions", "target_model_name": "demo-chat", "weight": 3}]}}}}),
        )
        .file(
            "broken.json",
            "{\n  \"p\": {\n    \"target_base_url\": \"ftp://nowhere\",\n    \"models\": {}\n  }\n}",
        )
        .start()
        .await;
    for _ in 0..3 {
        let response = app
            .post_json(
                "/v1/chat/completions",
                json!({"model": "demo/chat", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    app
}

#[tokio::test]
async fn status_json_shows_files_problems_models_and_traffic() {
    let app = app_with_a_broken_file().await;

    let report: Value = app
        .http
        .get(app.url("/status.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    let files = report["config"]["files"].as_array().unwrap();
    let broken = files.iter().find(|f| f["file"] == "broken.json").unwrap();
    assert_eq!(broken["status"], "error");
    let error = broken["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["severity"] == "error")
        .unwrap();
    assert_eq!((&error["line"], &error["column"]), (&json!(3), &json!(5)));
    assert!(error["message"].as_str().unwrap().contains("ftp://nowhere"));
    let model = &report["models"][0];
    assert_eq!(model["name"], "demo/chat");
    assert_eq!(model["routes"][0]["endpoints"][0]["weight"], 3.0);
    assert_eq!(model["routes"][0]["endpoints"][0]["ejected"], false);
    assert_eq!(model["traffic"]["requests"], 3, "{model}");
    let buckets = model["traffic"]["duration_buckets"].as_array().unwrap();
    assert_eq!(buckets.last().unwrap()[1], 3, "{buckets:?}");
}

#[tokio::test]
async fn the_page_is_one_self_contained_html_file_at_root_and_status() {
    let app = app_with_a_broken_file().await;

    for path in ["/", "/status"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let html = response.text().await.unwrap();
        assert!(html.contains("status.json"));
        // No external assets: nothing is loaded from another origin.
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}

/// Debian's `chromium` (`.ci/run` installs it when missing).
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .filter_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
        .next()
        .expect("chromium is installed (.ci/run installs the Debian package `chromium`)")
}

/// Runs headless Chromium on `url` with a fresh profile and no network of its own; returns stdout.
async fn headless(url: &str, profile: &Path, extra: &[String]) -> String {
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("chromium starts");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn chromium_renders_the_models_and_the_config_error_and_screenshots_it() {
    let app = app_with_a_broken_file().await;
    let temp = tempfile::tempdir().unwrap();
    let url = app.url("/status");

    let dom = headless(
        &url,
        &temp.path().join("profile-dom"),
        &["--dump-dom".to_owned()],
    )
    .await;
    let mut screenshots = Vec::new();
    for (name, size) in [("phone", "390,1400"), ("wide", "1440,1000")] {
        let file = temp.path().join(format!("status-{name}.png"));
        headless(
            &url,
            &temp.path().join(format!("profile-{name}")),
            &[
                format!("--screenshot={}", file.display()),
                format!("--window-size={size}"),
            ],
        )
        .await;
        screenshots.push(file);
    }

    // Rendered by the page's script from status.json, so the script ran and the fetch worked.
    assert!(dom.contains("demo/chat"), "{dom}");
    assert!(dom.contains("version "), "{dom}");
    assert!(dom.contains("broken.json:3:"), "{dom}");
    assert!(dom.contains("ftp://nowhere"), "{dom}");
    assert!(dom.contains("in pool"), "{dom}");
    for file in screenshots {
        let png = std::fs::read(&file).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", file.display());
        // Kept for a look when STATUS_SCREENSHOT_DIR is set.
        if let Some(dir) = std::env::var_os("STATUS_SCREENSHOT_DIR") {
            std::fs::copy(&file, Path::new(&dir).join(file.file_name().unwrap())).unwrap();
        }
    }
}
