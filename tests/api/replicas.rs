//! Three llmux processes behind a real nginx (round robin), sharing state through a real
//! redis-server (issue 13): ids and image URLs made by one replica work through any other, a
//! replica SIGKILLed and restarted loses nothing, one key's request and token limits count once
//! across the replicas, and a Redis that stops costs requests no more than its deadline (limits
//! fail open, or closed when configured) and comes back by itself.
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::redis_server::{free_port, RedisServer};

/// The Redis deadline the replicas run with: above the default (50 ms) so that a busy CI machine
/// (three replicas, nginx, Redis and the test on two cores) does not turn slow answers into
/// fallbacks; the bound with Redis stopped is checked against it all the same.
const REDIS_DEADLINE: Duration = Duration::from_millis(500);
/// Scheduling slack on a loaded CI machine (two cores, three replicas, nginx, Redis, the test).
const SLACK: Duration = Duration::from_millis(500);
/// How long a process gets to be up.
const START_DEADLINE: Duration = Duration::from_secs(20);
const PNG_HEADER: &[u8] = b"\x89PNG\r\n\x1a\n";

/// An upstream that keeps the responses it creates, as OpenAI does: asking the wrong upstream
/// for an id is a 404, so every call must reach the endpoint that created the response.
struct ResponsesUpstream {
    url: String,
    state: Arc<UpstreamState>,
    handle: ServerHandle,
}

#[derive(Default)]
struct UpstreamState {
    name: String,
    responses: Mutex<HashMap<String, Value>>,
    created: AtomicUsize,
}

impl ResponsesUpstream {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(UpstreamState {
            name: name.into(),
            ..UpstreamState::default()
        });
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/responses", web::post().to(create))
                .route("/v1/responses/{id}", web::get().to(retrieve))
                .route("/v1/responses/{id}", web::delete().to(delete))
                .route("/v1/responses/{id}/cancel", web::post().to(cancel))
                .route("/v1/responses/{id}/input_items", web::get().to(input_items))
                .route("/v1/images/generations", web::post().to(image))
                .route("/v1/chat/completions", web::post().to(chat))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, state, handle }
    }

    fn created(&self) -> usize {
        self.state.created.load(Ordering::SeqCst)
    }
}

impl Drop for ResponsesUpstream {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

fn not_found(id: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": {
        "message": format!("No response found with id '{id}'."),
        "type": "invalid_request_error", "param": null, "code": null}}))
}

async fn create(body: web::Json<Value>, state: web::Data<UpstreamState>) -> HttpResponse {
    if let Some(previous) = body["previous_response_id"].as_str() {
        if !state.responses.lock().unwrap().contains_key(previous) {
            return not_found(previous);
        }
    }
    let n = state.created.fetch_add(1, Ordering::SeqCst);
    let id = format!("resp_{}_{n}", state.name);
    let response = json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed",
        "model": body["model"], "previous_response_id": body["previous_response_id"],
        "output": [{"type": "message", "id": format!("msg_{n}"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    });
    state.responses.lock().unwrap().insert(id, response.clone());
    HttpResponse::Ok().json(response)
}

/// The id in the URL and the response stored under it.
fn stored(request: &HttpRequest, state: &UpstreamState) -> (String, Option<Value>) {
    let id = request
        .match_info()
        .get("id")
        .unwrap_or_default()
        .to_owned();
    let response = state.responses.lock().unwrap().get(&id).cloned();
    (id, response)
}

async fn retrieve(request: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    match stored(&request, &state) {
        (_, Some(response)) => HttpResponse::Ok().json(response),
        (id, None) => not_found(&id),
    }
}

async fn cancel(request: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    match stored(&request, &state) {
        (_, Some(mut response)) => {
            response["status"] = "cancelled".into();
            HttpResponse::Ok().json(response)
        }
        (id, None) => not_found(&id),
    }
}

async fn input_items(request: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    match stored(&request, &state) {
        (_, Some(_)) => {
            HttpResponse::Ok().json(json!({"object": "list", "data": [], "has_more": false}))
        }
        (id, None) => not_found(&id),
    }
}

async fn delete(request: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    let id = request
        .match_info()
        .get("id")
        .unwrap_or_default()
        .to_owned();
    match state.responses.lock().unwrap().remove(&id) {
        Some(_) => HttpResponse::Ok()
            .json(json!({"id": id, "object": "response.deleted", "deleted": true})),
        None => not_found(&id),
    }
}

/// Base64 images only (an upstream with `upstream_image_format: b64_json`), each one different.
async fn image(state: web::Data<UpstreamState>) -> HttpResponse {
    let n = state.created.fetch_add(1, Ordering::SeqCst);
    let bytes = [PNG_HEADER, format!("image {n}").as_bytes()].concat();
    HttpResponse::Ok().json(json!({"created": 1, "data": [{"b64_json": STANDARD.encode(bytes)}]}))
}

/// Tokens every chat answer reports using (input + output).
const CHAT_TOKENS: u64 = 100;

async fn chat(body: web::Json<Value>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hi"}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": CHAT_TOKENS - 20, "total_tokens": CHAT_TOKENS}
    }))
}

/// One llmux process (the binary), on a port of its own.
struct Replica {
    port: u16,
    child: Option<Child>,
    config_dir: std::path::PathBuf,
    redis_url: String,
    base_url: String,
    /// Flags beyond the ones every replica gets.
    extra_args: Vec<String>,
}

impl Replica {
    async fn start(config_dir: &Path, redis_url: &str, base_url: &str) -> Self {
        Self::start_with(config_dir, redis_url, base_url, &[]).await
    }

    async fn start_with(
        config_dir: &Path,
        redis_url: &str,
        base_url: &str,
        extra_args: &[&str],
    ) -> Self {
        let mut replica = Self {
            port: free_port(),
            child: None,
            config_dir: config_dir.to_owned(),
            redis_url: redis_url.to_owned(),
            base_url: base_url.to_owned(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        replica.restart().await;
        replica
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port) and waits until it is ready.
    async fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = match std::env::var("TEST_LOG") {
            Ok(_) => Stdio::inherit(),
            Err(_) => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_llmux"))
            .arg("--config-dir")
            .arg(&self.config_dir)
            .args([
                "--port",
                &self.port.to_string(),
                "--workers",
                "1",
                "--log",
                "warn",
            ])
            .args(["--watch", "off", "--base-url", &self.base_url])
            .args(["--redis-url", &self.redis_url])
            .arg("--redis-timeout")
            .arg(REDIS_DEADLINE.as_secs_f64().to_string())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the llmux binary runs");
        self.child = Some(child);
        let ready = format!("{}/ready", self.address());
        wait_for(&format!("replica on {}", self.port), || async {
            reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    /// SIGKILL: no drain, no goodbye.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("the replica runs");
        child.start_kill().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("a killed replica exits");
    }
}

/// nginx round robin over the replicas, run by the test with its own prefix and config.
struct Nginx {
    port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(replicas: &[u16], port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers (user nobody) write their temp files under the prefix.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let servers: String = replicas
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    upstream llmux {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://llmux;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_connect_timeout 1s;
            # A create sent on a kept-alive connection to the replica just killed meets a reset:
            # nginx retries POSTs on the next replica only with `non_idempotent`, and only with
            # the (small) request body buffered.
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"
        );
        std::fs::create_dir(dir.path().join("temp")).unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let globals = format!(
            // One process, no master: killing it by PID (kill_on_drop) leaves no orphaned worker
            // behind (a master killed with SIGKILL does not take its workers with it).
            "daemon off; master_process off; pid {}/nginx.pid; error_log stderr;",
            dir.path().display()
        );
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx runs (Debian's nginx package; .ci/run installs it)");
        let health = format!("http://127.0.0.1:{port}/health");
        wait_for("nginx", || async {
            reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        Self {
            port,
            _child: child,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < START_DEADLINE,
            "{what} not up within {START_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything of the run: Redis, two upstreams in one pool, three replicas, nginx.
struct Cluster {
    redis: RedisServer,
    upstreams: [ResponsesUpstream; 2],
    replicas: Vec<Replica>,
    nginx: Nginx,
    http: reqwest::Client,
    config_dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With `keys`, a key file (`llmux_access` section) beside the providers: access control on.
    async fn start_with(keys: Option<Value>) -> Self {
        let redis = RedisServer::start();
        let upstreams = [
            ResponsesUpstream::start("a").await,
            ResponsesUpstream::start("b").await,
        ];
        let config_dir = tempfile::tempdir().unwrap();
        let provider = |url: &str, images: bool| {
            let mut endpoints = vec![
                json!({"path": "v1/responses", "target_model_name": "t"}),
                json!({"path": "v1/chat/completions", "target_model_name": "t"}),
            ];
            if images {
                endpoints.push(
                    json!({"path": "v1/images/generations", "target_model_name": "img",
                                      "upstream_image_format": "b64_json"}),
                );
            }
            json!({"target_base_url": url, "request_timeout": 10, "max_retries": 0,
                   "models": {"m": {"endpoints": endpoints}}})
        };
        let config = json!({
            "upstream-a": provider(&upstreams[0].url, true),
            "upstream-b": provider(&upstreams[1].url, false),
        });
        std::fs::write(config_dir.path().join("providers.json"), config.to_string()).unwrap();
        if let Some(keys) = keys {
            std::fs::write(config_dir.path().join("keys.json"), keys.to_string()).unwrap();
        }
        let nginx_port = free_port();
        let base_url = format!("http://127.0.0.1:{nginx_port}");
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Replica::start(config_dir.path(), &redis.url(), &base_url).await);
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let nginx = Nginx::start(&ports, nginx_port).await;
        Self {
            redis,
            upstreams,
            replicas,
            nginx,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            config_dir,
        }
    }

    /// A chat completion as `key`, through nginx (or `base` when given): status, Retry-After,
    /// error body, time taken.
    async fn chat_as(
        &self,
        key: &str,
        base: Option<&str>,
    ) -> (u16, Option<String>, Value, Duration) {
        let started = Instant::now();
        let url = match base {
            Some(base) => format!("{base}/v1/chat/completions"),
            None => self.nginx.url("/v1/chat/completions"),
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(key)
            .json(&json!({"model": "m", "max_tokens": 80,
                          "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .expect("nginx answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, retry_after, body, started.elapsed())
    }

    /// A request through nginx: status, JSON body (when there is one), time taken.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, Duration) {
        let started = Instant::now();
        let mut request = self.http.request(method, self.nginx.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("nginx answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, started.elapsed())
    }

    /// One conversation: create, continue it, retrieve, list its input items, cancel, delete.
    /// Returns a problem, or the kept id (created, continued, never deleted) and the longest call.
    async fn round(&self, round: usize) -> Result<(String, Duration), String> {
        use reqwest::Method;
        let mut longest = Duration::ZERO;
        let mut check =
            |what: &str, (status, body, took): (u16, Value, Duration), expected: u16| {
                longest = longest.max(took);
                match status == expected {
                    true => Ok(body),
                    false => Err(format!("round {round}: {what}: {status} {body}")),
                }
            };
        let created = check(
            "create",
            self.call(
                Method::POST,
                "/v1/responses",
                Some(json!({"model": "m", "input": "Hi"})),
            )
            .await,
            200,
        )?;
        let id = created["id"]
            .as_str()
            .ok_or("create gave no id")?
            .to_owned();
        let next = check(
            "continue",
            self.call(
                Method::POST,
                "/v1/responses",
                Some(json!({"model": "m", "input": "More", "previous_response_id": id})),
            )
            .await,
            200,
        )?;
        let next_id = next["id"].as_str().ok_or("continue gave no id")?.to_owned();
        let same_upstream = id.split('_').nth(1) == next_id.split('_').nth(1);
        if !same_upstream {
            return Err(format!(
                "round {round}: {next_id} continued {id} on another upstream"
            ));
        }
        for suffix in ["", "/input_items"] {
            check(
                suffix,
                self.call(Method::GET, &format!("/v1/responses/{id}{suffix}"), None)
                    .await,
                200,
            )?;
        }
        let cancelled = check(
            "cancel",
            self.call(Method::POST, &format!("/v1/responses/{id}/cancel"), None)
                .await,
            200,
        )?;
        if cancelled["status"] != "cancelled" {
            return Err(format!("round {round}: cancel answered {cancelled}"));
        }
        check(
            "delete",
            self.call(Method::DELETE, &format!("/v1/responses/{id}"), None)
                .await,
            200,
        )?;
        check(
            "after delete",
            self.call(Method::GET, &format!("/v1/responses/{id}"), None)
                .await,
            404,
        )?;
        Ok((next_id, longest))
    }

    /// A new image URL, made by whichever replica nginx picked.
    async fn image_url(&self) -> Result<String, String> {
        let (status, body, _) = self
            .call(
                reqwest::Method::POST,
                "/v1/images/generations",
                Some(json!({"model": "m", "prompt": "a cat"})),
            )
            .await;
        match (status, body["data"][0]["url"].as_str()) {
            (200, Some(url)) => Ok(url.to_owned()),
            _ => Err(format!("image: {status} {body}")),
        }
    }

    /// Fetches an image URL three times (so through every replica): every time a PNG.
    async fn fetch_image(&self, url: &str) -> Result<(), String> {
        for _ in 0..3 {
            let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            if status != 200 || !bytes.starts_with(PNG_HEADER) {
                return Err(format!("{url}: {status}"));
            }
        }
        Ok(())
    }

    /// `count` creates, each retrieved through the next replica: every call's time, sorted.
    /// Only creates must succeed (with Redis down, another replica may not know the id).
    async fn create_and_retrieve(&self, count: usize) -> Vec<Duration> {
        let mut times = Vec::new();
        for _ in 0..count {
            let body = json!({"model": "m", "input": "Hi"});
            let (status, body, took) = self
                .call(reqwest::Method::POST, "/v1/responses", Some(body))
                .await;
            assert_eq!(status, 200, "{body}");
            times.push(took);
            let id = body["id"].as_str().unwrap();
            let path = format!("/v1/responses/{id}");
            let (_, _, took) = self.call(reqwest::Method::GET, &path, None).await;
            times.push(took);
        }
        times.sort();
        times
    }

    /// The Redis lines of every replica's /metrics, for failure messages.
    async fn redis_metrics(&self) -> String {
        let mut text = String::new();
        for replica in &self.replicas {
            let url = format!("{}/metrics", replica.address());
            let Ok(response) = reqwest::get(url).await else {
                continue;
            };
            let metrics = response.text().await.unwrap_or_default();
            for line in metrics.lines().filter(|l| l.starts_with("llmux_redis")) {
                text.push_str(&format!("{}: {line}\n", replica.port));
            }
        }
        text
    }

    /// Every kept id answers through every replica.
    async fn check_kept(&self, kept: &[String]) -> Result<(), String> {
        for id in kept {
            for _ in 0..3 {
                let (status, body, _) = self
                    .call(reqwest::Method::GET, &format!("/v1/responses/{id}"), None)
                    .await;
                if status != 200 || body["id"] != id.as_str() {
                    return Err(format!("kept {id}: {status} {body}"));
                }
            }
        }
        Ok(())
    }
}

/// A request of the background load: when it ran and what went wrong.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    ended: Instant,
    problem: Option<String>,
}

/// Two clients creating and retrieving responses through nginx until `stop`.
fn background_load(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..2)
        .map(|_| {
            let (http, base) = (cluster.http.clone(), cluster.nginx.url(""));
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let create = http
                        .post(format!("{base}/v1/responses"))
                        .json(&json!({"model": "m", "input": "Hi"}))
                        .send()
                        .await;
                    let problem = match create {
                        Ok(r) if r.status() == 200 => {
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            let id = body["id"].as_str().unwrap_or_default().to_owned();
                            let get = http.get(format!("{base}/v1/responses/{id}")).send().await;
                            match get {
                                Ok(r) if r.status() == 200 => None,
                                Ok(r) => Some(format!("retrieve {id}: {}", r.status())),
                                Err(e) => Some(format!("retrieve {id}: {e}")),
                            }
                        }
                        Ok(r) => Some(format!("create: {}", r.status())),
                        Err(e) => Some(format!("create: {e}")),
                    };
                    let ended = Instant::now();
                    outcomes.push(Outcome {
                        started,
                        ended,
                        problem,
                    });
                }
                outcomes
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_share_ids_and_images_through_kills_and_redis_outages() {
    let mut cluster = Cluster::start().await;
    let mut problems = Vec::new();
    let mut kept = Vec::new();
    let mut images = Vec::new();

    // 120 rounds; replica 1 is SIGKILLed after round 40 (while other clients' requests are in
    // flight) and back after round 60.
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = None;
    let mut killed_at = None;
    for round in 0..120 {
        if round == 30 {
            load = Some(background_load(&cluster, Arc::clone(&stop_load)));
        }
        match cluster.round(round).await {
            Ok((id, _)) => kept.push(id),
            Err(problem) => problems.push(problem),
        }
        match cluster.image_url().await {
            Ok(url) => images.push(url),
            Err(problem) => problems.push(problem),
        }
        if round == 40 {
            killed_at = Some(Instant::now());
            cluster.replicas[1].kill().await;
        }
        if round == 70 {
            stop_load.store(true, Ordering::SeqCst);
        }
        if round == 60 {
            cluster.replicas[1].restart().await;
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems: {problems:#?}\nredis metrics of the replicas:\n{}",
        problems.len(),
        cluster.redis_metrics().await
    );
    let (killed_at, load) = (killed_at.unwrap(), load.unwrap());
    let outcomes: Vec<Outcome> = futures_util::future::join_all(load)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert!(
        outcomes.len() > 50,
        "the load ran: {} requests",
        outcomes.len()
    );
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.problem.is_some()).collect();
    for outcome in &failed {
        assert!(
            outcome.started <= killed_at && outcome.ended >= killed_at,
            "a request that was not in flight on the killed replica failed: {:?}",
            outcome.problem
        );
    }
    assert!(
        failed.len() <= 2,
        "more failed than were in flight: {failed:?}"
    );
    assert!(
        cluster.upstreams.iter().all(|u| u.created() > 50),
        "both upstreams served creates"
    );
    // Everything made before, during and after the kill is still there, on every replica.
    cluster.check_kept(&kept).await.unwrap();
    for url in &images {
        cluster.fetch_image(url).await.unwrap();
    }

    // Redis stops: requests go on, none waits more than the deadline extra. The same calls are
    // timed with Redis up, then down.
    let before = cluster.create_and_retrieve(30).await;
    cluster.redis.stop();
    let during = cluster.create_and_retrieve(30).await;
    let spread = |times: &[Duration]| (times[times.len() / 2], times[times.len() - 1]);
    let (median_before, slowest_before) = spread(&before);
    let (median_during, slowest_during) = spread(&during);
    // A call that waited for Redis every time would add the deadline to the median; a stall of
    // this busy machine may add a little to one call.
    assert!(
        median_during <= median_before + Duration::from_millis(50),
        "median {median_during:?} with Redis down, {median_before:?} with it up"
    );
    assert!(
        slowest_during <= slowest_before + REDIS_DEADLINE + SLACK,
        "slowest call {slowest_during:?} with Redis down, {slowest_before:?} with it up"
    );

    // Redis is back (empty): sharing resumes by itself.
    cluster.redis.restart();
    let started = Instant::now();
    loop {
        let healthy = futures_util::future::join_all(cluster.replicas.iter().map(|r| {
            let url = format!("{}/health", r.address());
            async move {
                let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
                body["redis"] == "up"
            }
        }));
        // A replica notices Redis only when it calls it: requests do that.
        let _ = cluster.round(2000).await;
        if healthy.await.iter().all(|up| *up) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sharing did not resume"
        );
    }
    let mut after = Vec::new();
    for round in 0..30 {
        match cluster.round(3000 + round).await {
            Ok((id, _)) => after.push(id),
            Err(problem) => problems.push(problem),
        }
    }
    assert!(problems.is_empty(), "after Redis came back: {problems:#?}");
    cluster.check_kept(&after).await.unwrap();
}

/// A key entry for the key file: `name`, its key `llmux_{name}_key`, and limits.
fn key_entry(name: &str, limits: Value) -> Value {
    let mut entry = json!({"name": name, "key_sha256": sha256_hex(&key_of(name))});
    for (limit, value) in limits.as_object().unwrap() {
        entry[limit] = value.clone();
    }
    entry
}

fn key_of(name: &str) -> String {
    format!("llmux_{name}_key")
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Until every replica (and `also`) has called Redis since it came back: requests of a key with
/// a limit nobody reaches.
async fn wait_until_every_replica_sees_redis(cluster: &Cluster, also: &Replica) {
    let started = Instant::now();
    loop {
        let mut up = true;
        for replica in cluster.replicas.iter().chain([also]) {
            let _ = cluster
                .chat_as(&key_of("roomy"), Some(&replica.address()))
                .await;
            let url = format!("{}/health", replica.address());
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            up &= body["redis"] == "up";
        }
        if up {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Redis not seen again: {}",
            cluster.redis_metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `count` chat requests as `key` through nginx, `clients` at a time: the statuses (with
/// Retry-After) and how long it took.
async fn burst(
    cluster: &Cluster,
    key: &str,
    count: usize,
    clients: usize,
) -> (Vec<(u16, Option<String>, Value)>, Duration) {
    use futures_util::StreamExt;
    let started = Instant::now();
    let answers = futures_util::stream::iter(0..count)
        .map(|_| async {
            let (status, retry_after, body, _) = cluster.chat_as(key, None).await;
            (status, retry_after, body)
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await;
    (answers, started.elapsed())
}

/// 20 chat requests as `key` through nginx, one after another: status, body and time of each.
async fn timed(cluster: &Cluster, key: &str) -> Vec<(u16, Value, Duration)> {
    let mut times = Vec::new();
    for _ in 0..20 {
        let (status, _, body, took) = cluster.chat_as(key, None).await;
        times.push((status, body, took));
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_count_a_keys_limits_together_and_fail_open_or_closed_without_redis(
) {
    let keys = json!({"llmux_access": {"keys": [
        key_entry("sixty", json!({"requests_per_minute": 60})),
        key_entry("budget", json!({"tokens_per_day": 1000})),
        key_entry("roomy", json!({"requests_per_minute": 1_000_000})),
        key_entry("ten", json!({"requests_per_minute": 10})),
    ]}});
    let mut cluster = Cluster::start_with(Some(keys)).await;
    let strict = Replica::start_with(
        cluster.config_dir.path(),
        &cluster.redis.url(),
        &cluster.nginx.url(""),
        &["--redis-fail-closed"],
    )
    .await;
    wait_until_every_replica_sees_redis(&cluster, &strict).await;

    // 60 a minute, 90 asked at once through three replicas: 60 pass, plus the one a second the
    // smooth limit gives back while the burst runs.
    let (answers, took) = burst(&cluster, &key_of("sixty"), 90, 3).await;
    let admitted = answers.iter().filter(|(status, ..)| *status == 200).count();
    let refill = took.as_secs() as usize;
    assert!(
        (60..=61 + refill).contains(&admitted),
        "{admitted} of 90 admitted in {took:?}"
    );
    for (status, retry_after, body) in &answers {
        if *status != 200 {
            assert_eq!(*status, 429, "{body}");
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            let seconds: u64 = retry_after
                .as_deref()
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
        }
    }

    // 1000 tokens a day, 100 used per request (reserved first, settled from the answer's usage
    // by whichever replica served it): about 10 requests, wherever they land.
    let (answers, _) = burst(&cluster, &key_of("budget"), 30, 1).await;
    let admitted = answers.iter().filter(|(status, ..)| *status == 200).count() as u64;
    let used = admitted * CHAT_TOKENS;
    assert!(
        (800..=1000 + CHAT_TOKENS).contains(&used),
        "{admitted} requests of {CHAT_TOKENS} tokens admitted on a budget of 1000"
    );

    // Redis stops: requests wait no more than the deadline extra, limits fail open (the key
    // over its limit passes) or closed (the strict replica answers 503).
    let before = timed(&cluster, &key_of("roomy")).await;
    cluster.redis.stop();
    let during = timed(&cluster, &key_of("sixty")).await;
    for (status, body, _) in &during {
        assert_eq!(*status, 200, "fails open: {body}");
    }
    let slowest = |times: &[(u16, Value, Duration)]| times.iter().map(|t| t.2).max().unwrap();
    assert!(
        slowest(&during) <= slowest(&before) + REDIS_DEADLINE + SLACK,
        "slowest {:?} with Redis down, {:?} with it up",
        slowest(&during),
        slowest(&before)
    );
    for _ in 0..5 {
        let (status, _, body, took) = cluster
            .chat_as(&key_of("roomy"), Some(&strict.address()))
            .await;
        assert_eq!(status, 503, "fails closed: {body}");
        assert_eq!(body["error"]["type"], "server_error", "{body}");
        assert_eq!(body["error"]["code"], "access_unavailable", "{body}");
        assert!(
            took <= slowest(&before) + REDIS_DEADLINE + SLACK,
            "{took:?}"
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", cluster.replicas[0].address()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"llmux_limits_unchecked_total{decision="open"}"#),
        "{metrics}"
    );

    // Redis is back (empty): limits count across replicas again, by themselves.
    cluster.redis.restart();
    wait_until_every_replica_sees_redis(&cluster, &strict).await;
    let (answers, took) = burst(&cluster, &key_of("ten"), 20, 4).await;
    let admitted = answers.iter().filter(|(status, ..)| *status == 200).count();
    assert!(
        (10..=11 + took.as_secs() as usize / 6).contains(&admitted),
        "{admitted} of 20 admitted in {took:?} once Redis was back"
    );
    let (status, _, body, _) = cluster
        .chat_as(&key_of("roomy"), Some(&strict.address()))
        .await;
    assert_eq!(status, 200, "the strict replica admits again: {body}");
}
