//! Database keys, quota policies, overrides and protected endpoints admitting `/v1` calls
//! (issue 19): fast-openai-api-proxy's admission scenario through the admin API and real
//! clients, on a real SQLite file; two replicas on one real PostgreSQL; `llmux check` against a
//! store; usage counted back into the store.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llmux::secret::ApiKey;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::admin_api::ADMIN_TOKEN;
use crate::helpers::{assert_openai_error, eventually, provider_file, Binary, Spawn, TestApp};
use crate::postgres::Postgres;

/// llmux with the admin API on a SQLite file, serving `m` and `other` at the mock.
struct DatabaseApp {
    app: TestApp,
    _data: TempDir,
}

async fn spawn_database_app(
    edit: impl FnOnce(&mut llmux::cli::ServeArgs) + 'static,
) -> DatabaseApp {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let app = Spawn::new()
        // The same token for the admin API and the decision trace.
        .env("LLMUX_ADMIN_TOKEN", ADMIN_TOKEN)
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m"), ("other", "target-o")]),
        )
        .args(move |args| {
            args.access.admin_token = Some(ApiKey::new(ADMIN_TOKEN));
            args.access.data_dir = data_dir;
            edit(args);
        })
        .start()
        .await;
    DatabaseApp { app, _data: data }
}

impl DatabaseApp {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .app
            .http
            .request(method.clone(), self.app.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Creates a key through the admin API; returns (id, key).
    async fn create_key(&self, body: Value) -> (String, String) {
        let created = self
            .admin(Method::POST, "/api/admin/keys", Some(body))
            .await;
        (
            created["id"].as_str().unwrap().to_owned(),
            created["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /v1/chat/completions` for `model` with `key`, optionally asking for the trace.
    async fn chat(
        &self,
        key: Option<&str>,
        model: &str,
        trace_token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .app
            .http
            .post(self.app.url("/v1/chat/completions"))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(token) = trace_token {
            request = request.header("x-llmux-admin-token", token);
        }
        request.send().await.unwrap()
    }

    /// Waits until `key` is known to admission: the store's snapshot reached the key table.
    /// Changes made before the key was created are then live too (one snapshot, one revision).
    async fn wait_until_admitted(&self, key: &str) -> Duration {
        let (_, waited) = eventually(Duration::from_secs(2), "the key to be admitted", || async {
            let status = self
                .app
                .http
                .get(self.app.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status();
            (status == StatusCode::OK).then_some(())
        })
        .await;
        waited
    }
}

fn decision(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-llmux-quota-decision")
        .map(|value| value.to_str().unwrap().to_owned())
}

/// Sleeps past the end of the current minute when fewer than `needed` seconds are left in it,
/// so that minute figures are read in the minute they were made in.
async fn within_one_minute(needed: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 60 - now % 60;
    if left < needed {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

#[tokio::test]
async fn fast_openai_api_proxys_admission_scenario_passes_with_database_policies_and_overrides() {
    admission_scenario(&spawn_database_app(|_| {}).await).await;
}

#[tokio::test]
async fn fast_openai_api_proxys_admission_scenario_passes_on_postgresql_too() {
    let postgres = Postgres::start();
    let url = postgres.url.clone();
    let app =
        spawn_database_app(move |args| args.access.database_url = Some(ApiKey::new(url))).await;
    admission_scenario(&app).await;
}

/// Per-user override 200/200/429, the policy itself, the trace only for admins, the exempt owner,
/// no policy → 200, the policy switched to global → a cross-user 429.
async fn admission_scenario(app: &DatabaseApp) {
    // No policy: a database key's call is admitted (and nobody without a key is).
    let (_, bob) = app
        .create_key(json!({"name": "bob", "owner_id": "bob"}))
        .await;
    app.wait_until_admitted(&bob).await;
    assert_openai_error(app.chat(None, "m", None).await, 401).await;
    let free = app.chat(Some(&bob), "m", Some(ADMIN_TOKEN)).await;
    assert_eq!(free.status(), 200);
    assert!(decision(&free)
        .unwrap()
        .starts_with("source=none;allowed=true"));

    // A per-user policy of 3 a minute, alice's override of 2, carol exempt.
    let policy = app
        .admin(
            Method::POST,
            "/api/admin/quota-policies",
            Some(json!({"api_path": "/v1/chat/completions", "model": "m",
                        "window_type": "minute", "request_limit": 3})),
        )
        .await;
    for (owner, exempt) in [("alice", false), ("carol", true)] {
        app.admin(
            Method::POST,
            "/api/admin/quota-overrides",
            Some(
                json!({"api_path": "/v1/chat/completions", "model": "m", "owner_id": owner,
                        "window_type": "minute", "request_limit": 2, "exempt": exempt}),
            ),
        )
        .await;
    }
    let (_, alice) = app
        .create_key(json!({"name": "alice", "owner_id": "alice"}))
        .await;
    let (_, carol) = app
        .create_key(json!({"name": "carol", "owner_id": "carol"}))
        .await;
    app.wait_until_admitted(&carol).await;

    // Per-user override of 2: 200, 200, 429 with Retry-After.
    let statuses = [
        app.chat(Some(&alice), "m", None).await.status(),
        app.chat(Some(&alice), "m", None).await.status(),
    ];
    assert_eq!(statuses, [200, 200]);
    let refused = app.chat(Some(&alice), "m", Some(ADMIN_TOKEN)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let trace = decision(&refused).unwrap();
    assert!(
        trace.starts_with("source=override;allowed=false"),
        "{trace}"
    );
    assert!(!trace.contains("alice"), "never an owner id: {trace}");
    let body = assert_openai_error(refused, 429).await;
    assert_eq!(body["code"], "rate_limit_exceeded");
    // A model with no policy stays open to alice.
    assert_eq!(app.chat(Some(&alice), "other", None).await.status(), 200);

    // Bob is under the policy itself; the trace says so only to an admin.
    let traced = app.chat(Some(&bob), "m", Some(ADMIN_TOKEN)).await;
    assert_eq!(traced.status(), 200);
    let trace = decision(&traced).unwrap();
    assert!(
        trace.contains("source=policy") && trace.contains("bucket=owner"),
        "{trace}"
    );
    let plain = app.chat(Some(&bob), "m", None).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(decision(&plain), None);
    let asked = app
        .app
        .http
        .post(app.app.url("/v1/chat/completions"))
        .bearer_auth(&bob)
        .header("x-foap-debug-quota", "1")
        .header("x-llmux-admin-token", "not-the-admin-token")
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200);
    assert_eq!(decision(&asked), None, "a client cannot ask for the trace");

    // The exempt owner is never limited by the policy.
    for _ in 0..5 {
        let exempt = app.chat(Some(&carol), "m", Some(ADMIN_TOKEN)).await;
        assert_eq!(exempt.status(), 200);
        assert!(decision(&exempt)
            .unwrap()
            .starts_with("source=override-exempt"));
    }

    // The policy switched to one global counter of 2: dave's first call passes, then erin,
    // another owner, gets the 429.
    let id = policy["id"].as_str().unwrap();
    app.admin(
        Method::PUT,
        &format!("/api/admin/quota-policies/{id}"),
        Some(
            json!({"api_path": "/v1/chat/completions", "model": "m", "window_type": "minute",
                    "request_limit": 2, "enforce_per_user": false}),
        ),
    )
    .await;
    let (_, dave) = app
        .create_key(json!({"name": "dave", "owner_id": "dave"}))
        .await;
    let (_, erin) = app
        .create_key(json!({"name": "erin", "owner_id": "erin"}))
        .await;
    app.wait_until_admitted(&erin).await;
    assert_eq!(app.chat(Some(&dave), "m", None).await.status(), 200);
    assert_eq!(app.chat(Some(&dave), "m", None).await.status(), 200);
    let cross_user = app.chat(Some(&erin), "m", Some(ADMIN_TOKEN)).await;
    assert_eq!(cross_user.status(), 429);
    let trace = decision(&cross_user).unwrap();
    assert!(
        trace.contains("source=policy") && trace.contains("bucket=global"),
        "{trace}"
    );
    // Still exempt.
    assert_eq!(app.chat(Some(&carol), "m", None).await.status(), 200);
}

#[tokio::test]
async fn a_database_keys_default_quota_applies_and_its_usage_shows_real_v1_traffic() {
    let app = spawn_database_app(|_| {}).await;
    within_one_minute(20).await;
    let (id, key) = app
        .create_key(json!({"name": "quota", "owner_id": "q"}))
        .await;
    app.admin(
        Method::PUT,
        &format!("/api/admin/keys/{id}/quota"),
        Some(json!({"requests_per_minute": 3})),
    )
    .await;
    // The quota's revision came after the key's: calls pass unlimited until the headers show
    // it. Every call that passed is counted.
    let calls = std::cell::Cell::new(0);
    let (first, _) = eventually(Duration::from_secs(2), "the quota to be live", || async {
        let response = app.chat(Some(&key), "m", None).await;
        assert_eq!(response.status(), 200);
        calls.set(calls.get() + 1);
        let limited = response
            .headers()
            .get("x-ratelimit-limit-requests")
            .is_some_and(|limit| limit == "3");
        limited.then_some(response)
    })
    .await;
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "2");
    let mut under_quota = 1;
    loop {
        let response = app.chat(Some(&key), "m", None).await;
        if response.status() != 200 {
            let body = assert_openai_error(response, 429).await;
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("requests_per_minute"),
                "{body}"
            );
            break;
        }
        calls.set(calls.get() + 1);
        under_quota += 1;
        assert!(
            under_quota <= 3,
            "the default quota of 3 a minute did not apply"
        );
    }
    assert_eq!(under_quota, 3);
    // The usage endpoint counts the calls that passed, refused ones not (the record stage
    // counts a call once its answer is written, so allow it a moment).
    let calls = calls.get();
    let (usage, _) = eventually(
        Duration::from_secs(2),
        "the usage to count every call",
        || async {
            let usage = app
                .admin(Method::GET, &format!("/api/admin/keys/{id}/usage"), None)
                .await;
            (usage["used"] == calls).then_some(usage)
        },
    )
    .await;
    assert_eq!(usage["requests_per_minute"], 3);
    assert_eq!(usage["remaining"], (3 - calls).max(0));
}

#[tokio::test]
async fn model_enumeration_stays_closed_for_a_database_keys_allowed_models() {
    let app = spawn_database_app(|_| {}).await;
    let (_, key) = app
        .create_key(json!({"name": "only-m", "allowed_models": ["m"]}))
        .await;
    app.wait_until_admitted(&key).await;
    let models: Value = app
        .app
        .http
        .get(app.app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m"]);
    let forbidden = assert_openai_error(app.chat(Some(&key), "other", None).await, 404).await;
    let unknown = assert_openai_error(app.chat(Some(&key), "nothing", None).await, 404).await;
    assert_eq!(forbidden["code"], unknown["code"]);
    assert_eq!(
        forbidden["message"].as_str().unwrap().replace("other", "X"),
        unknown["message"].as_str().unwrap().replace("nothing", "X")
    );
    let direct = app
        .app
        .http
        .get(app.app.url("/v1/models/other"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_openai_error(direct, 404).await;
    assert_eq!(app.chat(Some(&key), "m", None).await.status(), 200);
}

#[tokio::test]
async fn protected_endpoints_need_a_database_key_while_access_control_is_off() {
    let app = spawn_database_app(|args| args.access_control = llmux::access::AccessMode::Off).await;
    let (_, key) = app.create_key(json!({"name": "k"})).await;
    assert_eq!(app.chat(None, "m", None).await.status(), 200, "off: open");
    app.admin(
        Method::POST,
        "/api/admin/protected-endpoints",
        Some(json!({"path": "v1/chat/completions/", "method": "post"})),
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "the endpoint to be protected",
        || async {
            (app.chat(None, "m", None).await.status() == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
    assert_openai_error(app.chat(Some("llmux_not-a-key"), "m", None).await, 401).await;
    assert_eq!(app.chat(Some(&key), "m", None).await.status(), 200);
    // Other paths and methods stay open.
    let embeddings = app
        .app
        .post_json("/v1/embeddings", json!({"model": "m", "input": "x"}))
        .await;
    assert_eq!(embeddings.status(), 200);
    assert_eq!(app.app.get("/v1/models").await.status(), 200);
}

#[tokio::test]
async fn a_database_key_named_like_a_file_key_is_refused_once_in_the_log_and_the_last_good_keys_stay(
) {
    let upstream = crate::mock::MockUpstream::start().await;
    let config_dir = tempfile::tempdir().unwrap();
    let file_key = "llmux_file-key-for-the-name-clash";
    std::fs::write(
        config_dir.path().join("provider.json"),
        provider_file("mock", "", &[("m", "target-m")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    std::fs::write(
        config_dir.path().join("keys.json"),
        json!({"llmux_access": {"keys": [{
            "name": "deploy",
            "key_sha256": crate::mock::sha256_hex(file_key.as_bytes()),
        }]}})
        .to_string(),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let server = Binary::start(
        config_dir.path(),
        &["--watch", "off", "--data-dir", data_dir.to_str().unwrap()],
        &[
            ("LLMUX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TEST_PROVIDER_KEY", "sk-upstream"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let create = |name: &str| {
        let request = http
            .post(server.url("/api/admin/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": name}));
        async move {
            let created: Value = request.send().await.unwrap().json().await.unwrap();
            created["api_key"].as_str().unwrap().to_owned()
        }
    };
    let chat = |key: &str| {
        let request = http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": []}));
        async move { request.send().await.unwrap().status() }
    };
    let first = create("first").await;
    eventually(Duration::from_secs(2), "the first key to admit", || {
        let status = chat(&first);
        async move { (status.await == 200).then_some(()) }
    })
    .await;
    // The admin API refuses the file key's name; a writer that does not see the key files (the
    // admin CLI here, another replica, a key file added later) can still make the clash.
    let refused = http
        .post(server.url("/api/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "deploy"}))
        .send()
        .await
        .unwrap();
    assert_openai_error(refused, 409).await;
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["admin", "--data-dir"])
        .arg(&data_dir)
        .args(["keys", "create", "deploy"])
        .env_remove("LLMUX_DATABASE_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    let clash = created["api_key"].as_str().unwrap().to_owned();
    let (warning, _) = eventually(Duration::from_secs(2), "the conflict warning", || {
        let lines = server.lines_with("conflict with a key file");
        async move { lines.into_iter().next() }
    })
    .await;
    let later = create("later").await;
    // Give the table every chance to take a later revision (the store polls every 500 ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for key in [&clash, &later] {
        assert_eq!(chat(key).await, 401);
    }
    assert_eq!(chat(&first).await, 200);
    assert_eq!(chat(file_key).await, 200);
    assert!(
        warning.contains("database key `deploy`")
            && warning.contains("has the same name as the key at")
            && warning.contains("keys.json"),
        "{warning}"
    );
    assert_eq!(
        server.lines_with("conflict with a key file").len(),
        1,
        "one warning while the conflict lasts"
    );
    for secret in [file_key, &first, &clash, &later] {
        assert!(server.lines_with(secret).is_empty(), "a key in the log");
        assert!(server
            .lines_with(&crate::mock::sha256_hex(secret.as_bytes()))
            .is_empty());
    }
}

#[tokio::test]
async fn llmux_check_reports_a_database_key_named_like_a_file_key_without_creating_a_store() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let config_dir = tempfile::tempdir().unwrap();
    let file_key = "llmux_file-key-for-check";
    std::fs::write(
        config_dir.path().join("keys.json"),
        json!({"llmux_access": {"keys": [{
            "name": "deploy",
            "key_sha256": crate::mock::sha256_hex(file_key.as_bytes()),
        }]}})
        .to_string(),
    )
    .unwrap();
    let check = |data_dir: &Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
            .args(["check", "--config-dir"])
            .arg(config_dir.path())
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("LLMUX_DATABASE_URL")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    // No store there: nothing to compare, and nothing created.
    let (ok, out) = check(&data_dir);
    assert!(ok, "{out}");
    assert!(!data_dir.exists(), "llmux check created the data dir");

    let create = |name: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
            .args(["admin", "--data-dir"])
            .arg(&data_dir)
            .args(["keys", "create", name])
            .env_remove("LLMUX_DATABASE_URL")
            .output()
            .unwrap();
        assert!(output.status.success());
        let created: Value = serde_json::from_slice(&output.stdout).unwrap();
        created["api_key"].as_str().unwrap().to_owned()
    };
    let other = create("other");
    let (ok, out) = check(&data_dir);
    assert!(ok, "{out}");
    assert!(
        out.contains("other") && out.contains("database key `other`"),
        "{out}"
    );
    let deploy = create("deploy");
    let (ok, out) = check(&data_dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("key `deploy` has the same name as the key at") && out.contains("keys.json"),
        "{out}"
    );
    for secret in [file_key, &other, &deploy] {
        assert!(!out.contains(secret), "a key in the output: {out}");
        assert!(
            !out.contains(&crate::mock::sha256_hex(secret.as_bytes())),
            "a whole digest in the output: {out}"
        );
    }
    // A --database-url nobody answers is an error naming the store, never its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["check", "--config-dir"])
        .arg(config_dir.path())
        .arg("--database-url")
        .arg(format!("postgres://llmux:s3cret-pw@127.0.0.1:{port}/llmux"))
        .output()
        .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success());
    assert!(out.contains("cannot read the access store"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
}

#[tokio::test]
async fn a_key_created_on_replica_a_admits_on_replica_b_and_its_revocation_on_a_refuses_on_b_within_two_seconds(
) {
    let postgres = Postgres::start();
    let upstream = crate::mock::MockUpstream::start().await;
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        config_dir.path().join("provider.json"),
        provider_file("mock", "", &[("m", "target-m")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    let env = [
        ("LLMUX_ADMIN_TOKEN", ADMIN_TOKEN),
        ("LLMUX_DATABASE_URL", postgres.url.as_str()),
        ("TEST_PROVIDER_KEY", "sk-upstream"),
    ];
    let replica_a = Binary::start(config_dir.path(), &["--watch", "off"], &env).await;
    let replica_b = Binary::start(config_dir.path(), &["--watch", "off"], &env).await;
    let http = reqwest::Client::new();
    let chat_on_b = |key: String| {
        let request = http
            .post(replica_b.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": []}));
        async move { request.send().await.unwrap().status() }
    };
    let created: Value = http
        .post(replica_a.url("/api/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "shared", "owner_id": "alice"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let (_, admitted_after) = eventually(Duration::from_secs(2), "B to admit the key", || {
        let status = chat_on_b(key.clone());
        async move {
            let status = status.await;
            assert!(status == 200 || status == 401, "{status}");
            (status == 200).then_some(())
        }
    })
    .await;

    let id = created["id"].as_str().unwrap();
    let revoked = http
        .delete(replica_a.url(&format!("/api/admin/keys/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (_, refused_after) = eventually(Duration::from_secs(2), "B to refuse the key", || {
        let status = chat_on_b(key.clone());
        async move { (status.await == 401).then_some(()) }
    })
    .await;
    eprintln!(
        "replica B admitted a key created on A after {} ms and refused it {} ms after A revoked it",
        admitted_after.as_millis(),
        refused_after.as_millis()
    );
    // B's usage reaches the shared store (batched): visible through A's admin API.
    let usage_key: Value = http
        .post(replica_a.url("/api/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "counted"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counted = usage_key["api_key"].as_str().unwrap().to_owned();
    let counted_id = usage_key["id"].as_str().unwrap().to_owned();
    http.put(replica_a.url(&format!("/api/admin/keys/{counted_id}/quota")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requests_per_minute": 100}))
        .send()
        .await
        .unwrap();
    within_one_minute(10).await;
    eventually(Duration::from_secs(2), "B to admit the counted key", || {
        let status = chat_on_b(counted.clone());
        async move { (status.await == 200).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(4), "B's use to show on A", || {
        let request = http
            .get(replica_a.url(&format!("/api/admin/keys/{counted_id}/usage")))
            .bearer_auth(ADMIN_TOKEN);
        async move {
            let usage: Value = request.send().await.unwrap().json().await.unwrap();
            (usage["used"].as_i64() >= Some(1)).then_some(())
        }
    })
    .await;
    // `llmux check` lists the shared store's keys beside the files' (read-only).
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["check", "--config-dir"])
        .arg(config_dir.path())
        .args(["--database-url", &postgres.url])
        .output()
        .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{out}");
    assert!(out.contains("database key `counted`"), "{out}");
    assert!(
        !out.contains("database key `shared`"),
        "a revoked key is not listed: {out}"
    );
    assert!(!out.contains(&counted), "{out}");
}

#[tokio::test]
async fn a_database_key_disabled_expired_or_revoked_through_the_admin_api_is_refused_saying_why() {
    let app = spawn_database_app(|_| {}).await;
    let (id, key) = app.create_key(json!({"name": "k", "owner_id": "o"})).await;
    app.wait_until_admitted(&key).await;
    assert_eq!(app.chat(Some(&key), "m", None).await.status(), 200);
    let refused_with = |reason: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            eventually(Duration::from_secs(2), reason, || async {
                let response = app.chat(Some(&key), "m", None).await;
                if response.status() != StatusCode::UNAUTHORIZED {
                    return None;
                }
                let error = assert_openai_error(response, 401).await;
                assert_eq!(error["code"], "invalid_api_key");
                let message = error["message"].as_str().unwrap().to_owned();
                message.contains(reason).then_some(message)
            })
            .await
        }
    };
    app.admin(
        Method::PATCH,
        &format!("/api/admin/keys/{id}"),
        Some(json!({"disabled": true})),
    )
    .await;
    refused_with("disabled").await;
    app.admin(
        Method::PATCH,
        &format!("/api/admin/keys/{id}"),
        Some(json!({"disabled": false, "expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    refused_with("expired").await;
    app.admin(
        Method::PATCH,
        &format!("/api/admin/keys/{id}"),
        Some(json!({"expires_at": null})),
    )
    .await;
    eventually(Duration::from_secs(2), "the key to work again", || async {
        (app.chat(Some(&key), "m", None).await.status() == 200).then_some(())
    })
    .await;
    app.admin(Method::DELETE, &format!("/api/admin/keys/{id}"), None)
        .await;
    refused_with("Incorrect API key").await;
}
