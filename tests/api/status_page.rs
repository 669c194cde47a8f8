//! The status page (`/`, `/status`) and `/status.json`, the page checked in headless Chromium;
//! with access control on, both behind the admin credential (issue 17).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{assert_openai_error, Spawn, TestApp, ADMIN_TOKEN};

/// A client key of the guarded apps: a router with keys shows its topology to no client.
const CLIENT_KEY: &str = "llmux_status_page_client_key";

/// A demo model next to a file broken on its third line.
async fn app_with_a_broken_file() -> TestApp {
    app_with_a_broken_file_and(Spawn::new()).await
}

/// A key file with `CLIENT_KEY`: access control turns on.
fn client_keys() -> Value {
    let digest: String = Sha256::digest(CLIENT_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({"llmux_access": {"keys": [{"name": "client", "key_sha256": digest}]}})
}

/// The same, with the key file and the admin token.
async fn guarded_app() -> TestApp {
    app_with_a_broken_file_and(Spawn::new().admin_token().file("keys.json", client_keys())).await
}

async fn app_with_a_broken_file_and(spawn: Spawn) -> TestApp {
    let app = spawn
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
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": "demo/chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    app
}

async fn get_with(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    accept: &str,
) -> reqwest::Response {
    let mut request = app.http.get(app.url(path)).header("accept", accept);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn with_keys_the_status_report_needs_the_admin_credential_and_refusals_look_alike() {
    let app = guarded_app().await;

    let mut refusals = Vec::new();
    for token in [
        None,
        Some(CLIENT_KEY),
        Some("not-the-admin-token-at-all"),
        Some("a.b.c"),
    ] {
        let response = get_with(&app, "/status.json", token, "*/*").await;
        refusals.push(assert_openai_error(response, 401).await);
    }
    // No hint of what exists: a client key, a wrong token and none get the same answer.
    assert!(
        refusals.windows(2).all(|pair| pair[0] == pair[1]),
        "{refusals:?}"
    );
    assert!(!refusals[0].to_string().contains("demo"), "{}", refusals[0]);

    let admin = get_with(&app, "/status.json", Some(ADMIN_TOKEN), "*/*").await;
    assert_eq!(admin.status(), 200);
    let report: Value = admin.json().await.unwrap();
    assert_eq!(report["models"][0]["name"], "demo/chat");

    // The page's per-model health lists endpoints: the same rule.
    for token in [None, Some(CLIENT_KEY)] {
        assert_openai_error(get_with(&app, "/health/demo/chat", token, "*/*").await, 401).await;
    }
    let health = get_with(&app, "/health/demo/chat", Some(ADMIN_TOKEN), "*/*").await;
    assert_eq!(health.status(), 200);
    // Liveness and readiness stay open for probes.
    for path in ["/health", "/ready"] {
        assert_eq!(
            get_with(&app, path, None, "*/*").await.status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn with_keys_the_page_answers_401_with_its_sign_in_form_to_browsers_and_json_to_others() {
    let app = guarded_app().await;
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    for path in ["/", "/status"] {
        let browser = get_with(&app, path, None, browser_accept).await;
        assert_eq!(browser.status(), 401, "{path}");
        assert_eq!(
            browser.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let html = browser.text().await.unwrap();
        assert!(html.contains("id=\"login-form\""), "{path}");
        // The page itself holds no data: models come only from status.json.
        assert!(!html.contains("demo/chat") && !html.contains("broken.json"));

        assert_openai_error(get_with(&app, path, None, "*/*").await, 401).await;
        assert_openai_error(get_with(&app, path, Some(CLIENT_KEY), "*/*").await, 401).await;
        let admin = get_with(&app, path, Some(ADMIN_TOKEN), browser_accept).await;
        assert_eq!(admin.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn with_keys_and_no_admin_credential_nobody_sees_the_status() {
    let app = app_with_a_broken_file_and(Spawn::new().file("keys.json", client_keys())).await;

    for token in [None, Some(ADMIN_TOKEN)] {
        assert_openai_error(get_with(&app, "/status.json", token, "*/*").await, 401).await;
    }
    // /admin/* still says how to set a credential.
    assert_openai_error(app.get("/admin/config").await, 503).await;
}

#[tokio::test]
async fn without_access_control_the_status_needs_no_credential() {
    let app = app_with_a_broken_file().await;

    for path in ["/", "/status", "/status.json"] {
        assert_eq!(
            get_with(&app, path, None, "*/*").await.status(),
            200,
            "{path}"
        );
    }
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

/// Headless Chromium driven over the DevTools protocol (its own WebSocket, on an ephemeral
/// port Chromium picks and writes to `DevToolsActivePort`), for what a user does by hand.
struct Browser {
    child: tokio::process::Child,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn start(profile: &Path) -> Self {
        let child = tokio::process::Command::new(chromium())
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
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let active_port = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&active_port).unwrap_or_default();
            if let Some(port) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("chromium has a page");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self {
            child,
            socket,
            next_id: 0,
        }
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let message = self.socket.next().await.expect("devtools open").unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} answered within 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits (at most 20 s) until `expression` is true in the page.
    async fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(expression).await != json!(true) {
            let text = self
                .eval("document.body ? document.body.innerText : ''")
                .await;
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {expression}; page: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the element `selector` as a keyboard would.
    async fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).focus()"))
            .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Saves a PNG of the page under `dir` (and `STATUS_SCREENSHOT_DIR` when set).
    async fn screenshot(&mut self, dir: &Path, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let file = dir.join(name);
        std::fs::write(&file, &png).unwrap();
        if let Some(keep) = std::env::var_os("STATUS_SCREENSHOT_DIR") {
            std::fs::copy(&file, Path::new(&keep).join(name)).unwrap();
        }
    }

    async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
        let exited = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if exited.is_err() {
            self.child.kill().await.unwrap();
        }
    }
}

#[tokio::test]
async fn chromium_signs_in_through_the_form_on_a_phone_and_sees_the_models() {
    let app = guarded_app().await;
    let temp = tempfile::tempdir().unwrap();
    let mut browser = Browser::start(&temp.path().join("profile")).await;
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 1400, "deviceScaleFactor": 2, "mobile": true}),
        )
        .await;

    browser
        .call("Page.navigate", json!({"url": app.url("/status")}))
        .await;
    browser
        .wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
        .await;
    assert_eq!(
        browser
            .eval("document.body.innerText.includes('demo/chat')")
            .await,
        json!(false)
    );
    browser
        .screenshot(temp.path(), "status-sign-in-phone.png")
        .await;

    // A wrong credential is refused and the form says so.
    browser
        .type_into("#token", "not-the-admin-token-at-all")
        .await;
    browser
        .eval("document.querySelector('#login-form button').click()")
        .await;
    browser
        .wait_for("document.getElementById('login-error').textContent.includes('not accepted')")
        .await;

    browser.type_into("#token", ADMIN_TOKEN).await;
    browser
        .eval("document.querySelector('#login-form button').click()")
        .await;
    browser
        .wait_for("document.getElementById('login').hidden && document.body.innerText.includes('demo/chat')")
        .await;
    let text = browser.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("broken.json:3:"), "{text}");
    assert!(text.contains("in pool"), "{text}");
    assert!(text.contains("Sign out"), "{text}");
    // The credential stays in this tab's sessionStorage, never in the URL.
    let url = browser.eval("location.href").await;
    assert!(!url.as_str().unwrap().contains(ADMIN_TOKEN), "{url}");
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('llmux-admin-credential')")
            .await,
        json!(ADMIN_TOKEN)
    );
    // Phone width: nothing wider than the screen.
    let width = browser.eval("document.documentElement.scrollWidth").await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "page is {width} px wide on a 390 px phone"
    );

    browser
        .screenshot(temp.path(), "status-signed-in-phone.png")
        .await;

    // Signing out forgets the credential.
    browser
        .eval("document.getElementById('signout').click()")
        .await;
    browser
        .wait_for("!document.getElementById('login').hidden && sessionStorage.getItem('llmux-admin-credential') === null")
        .await;
    browser.close().await;
}
