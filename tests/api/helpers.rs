//! spawn_app: llmux on 127.0.0.1:0 with a temp config dir, next to an in-process mock upstream.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use llmux::cli::ServeArgs;
use llmux::startup::{Application, EnvSource};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use crate::mock::{MockUpstream, Reply};

/// Logs go nowhere unless TEST_LOG is set.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let subscriber =
            llmux::telemetry::subscriber("test", "debug", std::io::stdout).expect("valid filter");
        let _ = llmux::telemetry::init(subscriber);
    }
});

/// The admin token of apps started with `Spawn::admin_token` (`/admin/*` needs it).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// The key provider configs in tests read from `TEST_PROVIDER_KEY`.
pub const PROVIDER_KEY: &str = "sk-upstream-secret";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// Kept so the dir lives as long as the app; tests edit files in it.
    pub config_dir: TempDir,
    pub upstream: MockUpstream,
    pub http: reqwest::Client,
    /// The admin API's store, with an admin token (kept so the dir lives as long as the app).
    pub _data_dir: Option<TempDir>,
}

pub struct Spawn {
    files: Vec<(String, String)>,
    env: HashMap<String, String>,
    args: Box<dyn FnOnce(&mut ServeArgs)>,
    data_dir: Option<TempDir>,
    v1_open: bool,
}

impl Spawn {
    pub fn new() -> Self {
        Self {
            files: Vec::new(),
            env: HashMap::from([("TEST_PROVIDER_KEY".to_owned(), PROVIDER_KEY.to_owned())]),
            args: Box::new(|_| {}),
            data_dir: None,
            v1_open: false,
        }
    }

    /// The admin credential for `/admin/*` with `/v1` left open (`--access-control off`): an
    /// admin API with no key yet would refuse every call, and these tests are about routes.
    pub fn admin_token_v1_open(mut self) -> Self {
        self.v1_open = true;
        self.admin_token()
    }

    /// Sets `LLMUX_ADMIN_TOKEN` to `ADMIN_TOKEN`. The admin credential also turns the admin API
    /// on, so the app gets a store in a temp data dir of its own.
    pub fn admin_token(mut self) -> Self {
        self.env
            .insert("LLMUX_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned());
        self.data_dir = Some(tempfile::tempdir().expect("temp dir"));
        self
    }

    pub fn file(mut self, name: &str, json: impl ToString) -> Self {
        self.files.push((name.to_owned(), json.to_string()));
        self
    }

    /// Sets a variable of the environment llmux reads (keys, `OTEL_*`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn args(mut self, edit: impl FnOnce(&mut ServeArgs) + 'static) -> Self {
        self.args = Box::new(edit);
        self
    }

    /// Writes the files (`{UPSTREAM}` in them becomes the mock's URL) and starts llmux.
    pub async fn start_with(self, upstream: MockUpstream) -> TestApp {
        LazyLock::force(&TRACING);
        let config_dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in &self.files {
            std::fs::write(
                config_dir.path().join(name),
                text.replace("{UPSTREAM}", &upstream.url),
            )
            .expect("write config file");
        }
        let mut args = ServeArgs::new(config_dir.path());
        args.workers = Some(2);
        if let Some(data_dir) = &self.data_dir {
            args.access.data_dir = data_dir.path().to_owned();
        }
        if self.v1_open {
            args.access_control = llmux::access::AccessMode::Off;
        }
        (self.args)(&mut args);
        let env = self.env;
        let env: EnvSource = Arc::new(move |name: &str| env.get(name).cloned());
        let application = Application::build_with_env(args, env).expect("llmux builds");
        let port = application.port();
        tokio::spawn(application.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            config_dir,
            upstream,
            http: reqwest::Client::new(),
            _data_dir: self.data_dir,
        }
    }

    pub async fn start(self) -> TestApp {
        let upstream = MockUpstream::start().await;
        self.start_with(upstream).await
    }
}

/// A provider file in fast-openai-api-proxy's format serving `models` (exposed key -> target name)
/// on chat, completions and embeddings at the mock upstream.
pub fn provider_file(provider: &str, prefix: &str, models: &[(&str, &str)]) -> Value {
    let models: serde_json::Map<String, Value> = models
        .iter()
        .map(|(key, target)| {
            let endpoints: Vec<Value> = [
                "v1/chat/completions",
                "v1/completions",
                "v1/embeddings",
                "v1/responses",
            ]
            .iter()
            .map(|path| serde_json::json!({"path": path, "target_model_name": target}))
            .collect();
            (key.to_string(), serde_json::json!({"endpoints": endpoints}))
        })
        .collect();
    serde_json::json!({
        provider: {
            "api_key_variable": "TEST_PROVIDER_KEY",
            "prefix": prefix,
            "target_base_url": "{UPSTREAM}",
            "request_timeout": 10,
            "health_timeout": 2,
            "models": models
        }
    })
}

/// llmux serving one model `m` (target `target-m`) at the mock upstream.
pub async fn spawn_app() -> TestApp {
    Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .start()
        .await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: impl ToString) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request reaches llmux")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches llmux")
    }

    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth("client-token-not-for-upstream")
            .multipart(form)
            .send()
            .await
            .expect("request reaches llmux")
    }

    pub fn openai(&self) -> async_openai::Client<async_openai::config::OpenAIConfig> {
        let config = async_openai::config::OpenAIConfig::new()
            .with_api_base(self.url("/v1"))
            .with_api_key("client-token-not-for-upstream");
        async_openai::Client::with_config(config)
    }
}

/// Asserts an OpenAI-shaped error and returns its message.
pub async fn assert_openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error.clone()
}

/// Polls `check` every 20 ms until it yields a value; panics after `deadline`. Returns the value
/// and how long it took.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `llmux` binary serving on a free port; killed when dropped. Its JSON log lines are
/// collected in `lines`.
pub struct Binary {
    pub child: tokio::process::Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts `llmux --port 0 --workers 1 --config-dir {dir} {args}` with `env` set, and waits
    /// (at most 20 s) for its "llmux listening" line.
    pub async fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmux"));
        command
            .args(["--port", "0", "--workers", "1", "--config-dir"])
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("llmux starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        // Keep reading the logs so the pipe never fills.
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let (port, _) = eventually(Duration::from_secs(20), "llmux listening", || {
            let port = lines.lock().unwrap().iter().find_map(|line| {
                let log: Value = serde_json::from_str(line).ok()?;
                let listening = log["msg"].as_str()?.contains("llmux listening");
                listening.then(|| log["port"].as_u64()).flatten()
            });
            async move { port.and_then(|port| u16::try_from(port).ok()) }
        })
        .await;
        Self { child, port, lines }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The log lines written so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}
