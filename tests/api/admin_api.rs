//! The admin API (/api/admin) and the self-service API (/api) through the real server, on a
//! real SQLite file or PostgreSQL: fast-openai-api-proxy's scenario, minus its defects.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use llmux::cli::ServeArgs;
use llmux::secret::ApiKey;
use llmux::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{assert_openai_error, provider_file, Spawn, TestApp};
use crate::postgres::Postgres;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A key of the apps' key file: admits `/v1` calls whatever the database holds.
pub const FILE_KEY: &str = "llmux_file-key-of-the-admin-tests";

pub struct AdminApp {
    pub app: TestApp,
    /// Kept so the SQLite file lives as long as the app.
    pub _data: TempDir,
}

/// llmux with the admin API (and self-service) on, its store in a temp data dir or `database_url`.
pub async fn spawn_admin_app(
    database_url: Option<String>,
    edit: impl FnOnce(&mut ServeArgs) + 'static,
) -> AdminApp {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let app = Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .file(
            "keys.json",
            json!({"llmux_access": {"keys": [{
                "name": "file-key",
                "key_sha256": crate::mock::sha256_hex(FILE_KEY.as_bytes()),
            }]}}),
        )
        .args(move |args| {
            args.access.admin_token = Some(ApiKey::new(ADMIN_TOKEN));
            args.access.self_service_api = true;
            args.access.data_dir = data_dir;
            args.access.database_url = database_url.map(ApiKey::new);
            edit(args);
        })
        .start()
        .await;
    AdminApp { app, _data: data }
}

impl AdminApp {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.app.http.request(method, self.app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let response = self.admin(method.clone(), path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

use reqwest::Method;

#[tokio::test]
async fn the_admin_api_needs_the_whole_admin_token() {
    let app = spawn_admin_app(None, |_| {}).await;
    for token in [
        None,
        Some("wrong"),
        Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        Some("test-admin-token-0123456789x"),
    ] {
        let response = app
            .call(Method::GET, "/api/admin/health", token, None)
            .await;
        assert_openai_error(response, 401).await;
    }
    let health = app.admin_json(Method::GET, "/api/admin/health", None).await;
    assert_eq!(health, json!({"status": "ok", "scope": "admin"}));
    let config = app
        .admin_json(Method::GET, "/api/admin/auth-config", None)
        .await;
    assert_eq!(config["admin"]["mode"], "static-token-only", "{config}");
    assert_eq!(config["self_service"]["mode"], "key-only", "{config}");
    // Bodies are bounded, and read only for an authenticated caller.
    let huge = json!({"name": "x".repeat(70 * 1024)});
    assert_openai_error(
        app.admin(Method::POST, "/api/admin/keys", Some(huge.clone()))
            .await,
        413,
    )
    .await;
    assert_openai_error(
        app.call(Method::POST, "/api/admin/keys", None, Some(huge))
            .await,
        401,
    )
    .await;
    // A wrong method is a 405, an unknown admin URL a 404, both in the OpenAI shape.
    assert_openai_error(app.admin(Method::PATCH, "/api/admin/keys", None).await, 405).await;
    assert_openai_error(
        app.admin(Method::GET, "/api/admin/nothing", None).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn admin_keys_are_shown_once_listed_masked_and_revoked_with_an_audit_trail() {
    let app = spawn_admin_app(None, |_| {}).await;
    let created = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "alice-laptop", "owner_id": "alice",
                "allowed_models": ["m", "openai/*"], "allowed_operations": ["chat"],
                "requests_per_minute": 60, "tokens_per_day": 1000, "expires_at": "2099-01-01T00:00:00Z"})),
        )
        .await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("llmux_") && key.len() == 38, "{key}");
    assert_eq!(
        created["masked_key"],
        format!("llmux_…{}", &key[key.len() - 4..])
    );
    assert_eq!(created["owner_id"], "alice");
    assert_eq!(created["allowed_models"], json!(["m", "openai/*"]));
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");
    let id = created["id"].as_str().unwrap().to_owned();

    let listed = app.admin_json(Method::GET, "/api/admin/keys", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0].get("api_key").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&key));
    let one = app
        .admin_json(Method::GET, &format!("/api/admin/keys/{id}"), None)
        .await;
    assert_eq!(one["requests_per_minute"], 60);

    // A duplicate name, a misspelled member, a bad value: refused, naming what is wrong.
    let duplicate = app
        .admin(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "alice-laptop"})),
        )
        .await;
    assert_openai_error(duplicate, 409).await;
    let misspelled = app
        .admin(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "x", "allowed_model": ["m"]})),
        )
        .await;
    let error = assert_openai_error(misspelled, 400).await;
    assert!(
        error["message"].as_str().unwrap().contains("allowed_model"),
        "{error}"
    );
    let empty = app
        .admin(Method::POST, "/api/admin/keys", Some(json!({"name": ""})))
        .await;
    assert_openai_error(empty, 400).await;
    let not_json = app
        .app
        .http
        .post(app.app.url("/api/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_openai_error(not_json, 400).await;

    // PATCH replaces the members it names; `null` clears one; name and owner stay.
    let patched = app
        .admin_json(
            Method::PATCH,
            &format!("/api/admin/keys/{id}"),
            Some(json!({"disabled": true, "tokens_per_day": null, "allowed_models": ["m"]})),
        )
        .await;
    assert_eq!(patched["disabled"], true);
    assert!(patched.get("tokens_per_day").is_none(), "{patched}");
    assert_eq!(patched["allowed_models"], json!(["m"]));
    assert_eq!(patched["requests_per_minute"], 60);
    assert_eq!(patched["name"], "alice-laptop");
    for bad in [
        json!({"name": "x"}),
        json!({"owner_id": "x"}),
        json!({"disabld": true}),
        json!({"requests_per_minute": 0}),
    ] {
        assert_openai_error(
            app.admin(Method::PATCH, &format!("/api/admin/keys/{id}"), Some(bad))
                .await,
            400,
        )
        .await;
    }
    assert_openai_error(
        app.admin(Method::PATCH, "/api/admin/keys/nope", Some(json!({})))
            .await,
        404,
    )
    .await;
    let revoked = app
        .admin_json(Method::DELETE, &format!("/api/admin/keys/{id}"), None)
        .await;
    assert_eq!(revoked, json!({"status": "deleted", "key_id": id}));
    assert_openai_error(
        app.admin(Method::DELETE, &format!("/api/admin/keys/{id}"), None)
            .await,
        404,
    )
    .await;
    assert_openai_error(
        app.admin(Method::GET, &format!("/api/admin/keys/{id}"), None)
            .await,
        404,
    )
    .await;
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/keys", None).await,
        json!([])
    );

    let audit = app.admin_json(Method::GET, "/api/admin/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.update", "key.create"],
        "{audit}"
    );
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "admin-token"));
    assert!(!audit.to_string().contains(&key), "{audit}");
    assert!(!audit.to_string().contains(ADMIN_TOKEN), "{audit}");
}

#[tokio::test]
async fn a_key_quota_and_its_usage_answer_404_until_set() {
    let app = spawn_admin_app(None, |_| {}).await;
    let created = app
        .admin_json(Method::POST, "/api/admin/keys", Some(json!({"name": "k"})))
        .await;
    let id = created["id"].as_str().unwrap();
    assert_openai_error(
        app.admin(Method::GET, &format!("/api/admin/keys/{id}/quota"), None)
            .await,
        404,
    )
    .await;
    assert_openai_error(
        app.admin(Method::GET, &format!("/api/admin/keys/{id}/usage"), None)
            .await,
        404,
    )
    .await;
    let zero = app
        .admin(
            Method::PUT,
            &format!("/api/admin/keys/{id}/quota"),
            Some(json!({"requests_per_minute": 0})),
        )
        .await;
    assert_openai_error(zero, 400).await;
    let set = app
        .admin_json(
            Method::PUT,
            &format!("/api/admin/keys/{id}/quota"),
            Some(json!({"requests_per_minute": 5})),
        )
        .await;
    assert_eq!(set, json!({"api_key_id": id, "requests_per_minute": 5}));
    let quota = app
        .admin_json(Method::GET, &format!("/api/admin/keys/{id}/quota"), None)
        .await;
    assert_eq!(quota, set);
    let usage = app
        .admin_json(Method::GET, &format!("/api/admin/keys/{id}/usage"), None)
        .await;
    assert_eq!(usage["api_key_id"], id);
    assert_eq!(usage["requests_per_minute"], 5);
    assert_eq!(usage["used"], 0);
    assert_eq!(usage["remaining"], 5);
    let reset = usage["reset_in_seconds"].as_i64().unwrap();
    assert!((1..=60).contains(&reset), "{usage}");
    assert_openai_error(
        app.admin(
            Method::PUT,
            "/api/admin/keys/nope/quota",
            Some(json!({"requests_per_minute": 5})),
        )
        .await,
        404,
    )
    .await;
}

fn override_body(owner: &str, model: &str) -> Value {
    json!({"api_path": "/v1/chat/completions", "model": model, "owner_id": owner,
           "window_type": "minute", "request_limit": 2})
}

#[tokio::test]
async fn protected_endpoints_policies_and_overrides_follow_fast_openai_api_proxy() {
    let app = spawn_admin_app(None, |_| {}).await;
    // Protected endpoints: normalized, 409 on a duplicate, deleted by id.
    let endpoint = app
        .admin_json(
            Method::POST,
            "/api/admin/protected-endpoints",
            Some(json!({"path": "v1/chat/completions/", "method": "post"})),
        )
        .await;
    assert_eq!(endpoint["path"], "/v1/chat/completions");
    assert_eq!(endpoint["method"], "POST");
    let duplicate = app
        .admin(
            Method::POST,
            "/api/admin/protected-endpoints",
            Some(json!({"path": "/v1/chat/completions", "method": "POST"})),
        )
        .await;
    assert_openai_error(duplicate, 409).await;
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/protected-endpoints", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Policies: 409 on a duplicate (api_path, model), PUT switches to a global bucket.
    let policy_body = json!({"api_path": "/v1/chat/completions", "model": "m", "window_type": "minute", "request_limit": 3});
    let policy = app
        .admin_json(
            Method::POST,
            "/api/admin/quota-policies",
            Some(policy_body.clone()),
        )
        .await;
    assert_eq!(policy["enforce_per_user"], true);
    assert_openai_error(
        app.admin(
            Method::POST,
            "/api/admin/quota-policies",
            Some(policy_body.clone()),
        )
        .await,
        409,
    )
    .await;
    let bad_window = app
        .admin(Method::POST, "/api/admin/quota-policies", Some(json!({"api_path": "/v1/x", "model": "m", "window_type": "week", "request_limit": 3})))
        .await;
    assert_openai_error(bad_window, 400).await;
    let policy_id = policy["id"].as_str().unwrap();
    let mut global = policy_body.clone();
    global["enforce_per_user"] = json!(false);
    let updated = app
        .admin_json(
            Method::PUT,
            &format!("/api/admin/quota-policies/{policy_id}"),
            Some(global),
        )
        .await;
    assert_eq!(updated["enforce_per_user"], false);
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/quota-policies", None)
            .await[0]["enforce_per_user"],
        false
    );

    // Overrides: 409 on a duplicate, 400 on a window that ends before it starts.
    let alice = app
        .admin_json(
            Method::POST,
            "/api/admin/quota-overrides",
            Some(override_body("alice", "m")),
        )
        .await;
    assert_openai_error(
        app.admin(
            Method::POST,
            "/api/admin/quota-overrides",
            Some(override_body("alice", "m")),
        )
        .await,
        409,
    )
    .await;
    let mut backwards = override_body("bob", "m");
    backwards["starts_at"] = json!(2_000_000_000);
    backwards["ends_at"] = json!(1_999_999_999);
    assert_openai_error(
        app.admin(Method::POST, "/api/admin/quota-overrides", Some(backwards))
            .await,
        400,
    )
    .await;
    let mut exempt = override_body("carol", "m");
    exempt["exempt"] = json!(true);
    app.admin_json(Method::POST, "/api/admin/quota-overrides", Some(exempt))
        .await;
    let mut scheduled = override_body("dave", "m");
    scheduled["starts_at"] = json!(4_000_000_000_i64);
    let scheduled = app
        .admin_json(Method::POST, "/api/admin/quota-overrides", Some(scheduled))
        .await;
    assert_eq!(scheduled["window_state"], "scheduled");
    assert_eq!(scheduled["active_now"], false);
    app.admin_json(
        Method::POST,
        "/api/admin/quota-overrides",
        Some(override_body("alice", "other")),
    )
    .await;

    // The list: its fields, filters, and pagination headers.
    let all = app
        .admin(Method::GET, "/api/admin/quota-overrides", None)
        .await;
    assert_eq!(all.headers()["x-total-count"], "4");
    assert_eq!(all.headers()["x-returned-count"], "4");
    assert!(all.headers().get("x-limit").is_none());
    let all: Value = all.json().await.unwrap();
    for field in [
        "id",
        "api_path",
        "model",
        "owner_id",
        "window_type",
        "request_limit",
        "exempt",
        "starts_at",
        "ends_at",
        "created_at",
        "active_now",
        "window_state",
    ] {
        assert!(all[0].get(field).is_some(), "{field} missing in {}", all[0]);
    }
    assert_eq!(
        all.as_array()
            .unwrap()
            .iter()
            .filter(|item| item["window_state"] == "active")
            .count(),
        3
    );
    let active: Value = app
        .admin(
            Method::GET,
            "/api/admin/quota-overrides?active_only=true",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active.as_array().unwrap().len(), 3);
    assert!(active
        .as_array()
        .unwrap()
        .iter()
        .all(|item| item["owner_id"] != "dave"));
    let mine: Value = app
        .admin(
            Method::GET,
            "/api/admin/quota-overrides?owner_id=alice",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let by_model: Value = app
        .admin(
            Method::GET,
            "/api/admin/quota-overrides?owner_id=alice&model=other",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_model.as_array().unwrap().len(), 1);
    let exempt_only: Value = app
        .admin(Method::GET, "/api/admin/quota-overrides?exempt=true", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exempt_only[0]["owner_id"], "carol");
    let page = app
        .admin(
            Method::GET,
            "/api/admin/quota-overrides?limit=1&offset=1",
            None,
        )
        .await;
    assert_eq!(page.headers()["x-total-count"], "4");
    assert_eq!(page.headers()["x-returned-count"], "1");
    assert_eq!(page.headers()["x-limit"], "1");
    assert_eq!(page.headers()["x-offset"], "1");
    let page: Value = page.json().await.unwrap();
    assert_eq!(page[0]["id"], all[1]["id"]);
    assert_openai_error(
        app.admin(Method::GET, "/api/admin/quota-overrides?limit=0", None)
            .await,
        400,
    )
    .await;
    assert_openai_error(
        app.admin(Method::GET, "/api/admin/quota-overrides?offset=-1", None)
            .await,
        400,
    )
    .await;

    // PUT on an override, deletes and 404s.
    let alice_id = alice["id"].as_str().unwrap();
    let mut raised = override_body("alice", "m");
    raised["request_limit"] = json!(7);
    let raised = app
        .admin_json(
            Method::PUT,
            &format!("/api/admin/quota-overrides/{alice_id}"),
            Some(raised),
        )
        .await;
    assert_eq!(raised["request_limit"], 7);
    let deleted = app
        .admin_json(
            Method::DELETE,
            &format!("/api/admin/quota-overrides/{alice_id}"),
            None,
        )
        .await;
    assert_eq!(
        deleted,
        json!({"status": "deleted", "override_id": alice_id})
    );
    assert_openai_error(
        app.admin(
            Method::DELETE,
            &format!("/api/admin/quota-overrides/{alice_id}"),
            None,
        )
        .await,
        404,
    )
    .await;
    assert_openai_error(
        app.admin(
            Method::PUT,
            &format!("/api/admin/quota-overrides/{alice_id}"),
            Some(override_body("alice", "m")),
        )
        .await,
        404,
    )
    .await;
    let deleted = app
        .admin_json(
            Method::DELETE,
            &format!("/api/admin/quota-policies/{policy_id}"),
            None,
        )
        .await;
    assert_eq!(
        deleted,
        json!({"status": "deleted", "policy_id": policy_id})
    );
    assert_openai_error(
        app.admin(
            Method::DELETE,
            &format!("/api/admin/quota-policies/{policy_id}"),
            None,
        )
        .await,
        404,
    )
    .await;
    let endpoint_id = endpoint["id"].as_str().unwrap();
    let deleted = app
        .admin_json(
            Method::DELETE,
            &format!("/api/admin/protected-endpoints/{endpoint_id}"),
            None,
        )
        .await;
    assert_eq!(
        deleted,
        json!({"status": "deleted", "endpoint_id": endpoint_id})
    );
    assert_openai_error(
        app.admin(
            Method::DELETE,
            &format!("/api/admin/protected-endpoints/{endpoint_id}"),
            None,
        )
        .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn self_service_never_turns_an_arbitrary_bearer_string_into_an_identity() {
    let app = spawn_admin_app(None, |_| {}).await;
    // fast-openai-api-proxy's hole: any bearer string became an owner that could mint keys.
    for token in [
        None,
        Some("anything-at-all"),
        Some("llmux_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(ADMIN_TOKEN),
    ] {
        assert_openai_error(
            app.call(
                Method::POST,
                "/api/keys",
                token,
                Some(json!({"name": "mine"})),
            )
            .await,
            401,
        )
        .await;
        assert_openai_error(app.call(Method::GET, "/api/keys", token, None).await, 401).await;
    }
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/keys", None).await,
        json!([])
    );
}

#[tokio::test]
async fn self_service_keys_are_isolated_per_owner_and_never_widen_access() {
    let app = spawn_admin_app(None, |_| {}).await;
    let mint = |owner: &'static str, extra: Value| {
        let mut body = json!({"name": format!("{owner}-seed"), "owner_id": owner});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let alice = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(mint(
                "alice",
                json!({"allowed_models": ["m"], "expires_at": "2090-01-01T00:00:00Z"}),
            )),
        )
        .await;
    let bob = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(mint("bob", json!({}))),
        )
        .await;
    let alice_key = alice["api_key"].as_str().unwrap();
    let bob_key = bob["api_key"].as_str().unwrap();
    let health: Value = app
        .call(Method::GET, "/api/health", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let created: Value = app
        .call(
            Method::POST,
            "/api/keys",
            Some(alice_key),
            Some(json!({"name": "alice-phone", "expires_at": "2095-01-01T00:00:00Z"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["owner_id"], "alice", "{created}");
    assert_eq!(
        created["allowed_models"],
        json!(["m"]),
        "inherits the caller's restrictions"
    );
    assert_eq!(
        created["expires_at"], "2090-01-01T00:00:00Z",
        "never outlives the caller's key"
    );
    assert!(created["api_key"].as_str().unwrap().starts_with("llmux_"));
    let widen = app
        .call(
            Method::POST,
            "/api/keys",
            Some(alice_key),
            Some(json!({"name": "x", "allowed_models": ["*"]})),
        )
        .await;
    assert_openai_error(widen, 400).await;
    // The new key proves alice's identity too.
    let new_key = created["api_key"].as_str().unwrap();
    let alice_keys: Value = app
        .call(Method::GET, "/api/keys", Some(new_key), None)
        .await
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = alice_keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice-phone", "alice-seed"]);
    assert!(!alice_keys.to_string().contains(alice_key));
    let bob_keys: Value = app
        .call(Method::GET, "/api/keys", Some(bob_key), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bob_keys.as_array().unwrap().len(), 1);
    assert_eq!(bob_keys[0]["name"], "bob-seed");

    // Bob cannot revoke alice's key: to him it does not exist.
    let alice_phone = created["id"].as_str().unwrap();
    assert_openai_error(
        app.call(
            Method::DELETE,
            &format!("/api/keys/{alice_phone}"),
            Some(bob_key),
            None,
        )
        .await,
        404,
    )
    .await;
    let revoked: Value = app
        .call(
            Method::DELETE,
            &format!("/api/keys/{alice_phone}"),
            Some(alice_key),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["status"], "deleted");
    // A revoked key proves nothing any more.
    assert_openai_error(
        app.call(Method::GET, "/api/keys", Some(new_key), None)
            .await,
        401,
    )
    .await;
    // Self-service usage: alice's keys with a default quota.
    let usage: Value = app
        .call(Method::GET, "/api/usage", Some(alice_key), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(usage["owner_id"], "alice");
    assert_eq!(usage["keys"], json!([]));
}

#[tokio::test]
async fn without_the_admin_or_self_service_api_no_store_is_created() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let args_dir = data_dir.clone();
    let app = Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .args(move |args| args.access.data_dir = args_dir)
        .start()
        .await;
    assert_openai_error(
        app.http
            .get(app.url("/api/admin/health"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_openai_error(
        app.http.get(app.url("/api/keys")).send().await.unwrap(),
        404,
    )
    .await;
    assert!(
        !data_dir.exists(),
        "a read-only root filesystem must keep working"
    );
}

#[tokio::test]
async fn start_up_refuses_inconsistent_access_settings_naming_the_setting() {
    let config_dir = tempfile::tempdir().unwrap();
    let check = |edit: &dyn Fn(&mut ServeArgs), setting: &str| {
        let mut args = ServeArgs::new(config_dir.path());
        edit(&mut args);
        let error = match Application::build(args) {
            Ok(_) => panic!("started with inconsistent settings ({setting})"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(setting), "{error} should name {setting}");
    };
    check(
        &|args| args.access.admin_oidc_only = true,
        "LLMUX_ADMIN_OIDC_ONLY",
    );
    check(
        &|args| args.access.admin_token = Some(ApiKey::new("short")),
        "LLMUX_ADMIN_TOKEN",
    );
    check(
        &|args| {
            args.access.self_service_api = true;
            args.access.self_service_oidc_only = true;
        },
        "LLMUX_SELF_SERVICE_OIDC_ONLY",
    );
    check(
        &|args| {
            args.access.admin_token = Some(ApiKey::new(ADMIN_TOKEN));
            args.access.database_url = Some(ApiKey::new("mysql://db/x"));
        },
        "LLMUX_DATABASE_URL",
    );
}

#[tokio::test]
async fn the_admin_api_answers_503_while_the_database_is_down_and_v1_keeps_serving() {
    let mut postgres = Postgres::start();
    let app = spawn_admin_app(Some(postgres.url.clone()), |_| {}).await;
    let created = app
        .admin_json(Method::POST, "/api/admin/keys", Some(json!({"name": "k"})))
        .await;
    let key = created["api_key"].as_str().unwrap();
    let chat = |key: &str| {
        app.app
            .http
            .post(app.app.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": []}))
            .send()
    };
    crate::helpers::eventually(Duration::from_secs(2), "the key to admit", || async {
        (chat(key).await.unwrap().status() == 200).then_some(())
    })
    .await;
    postgres.stop();
    let started = Instant::now();
    let response = app.admin(Method::GET, "/api/admin/keys", None).await;
    assert_openai_error(response, 503).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // The snapshot still admits the database's key.
    assert_eq!(chat(key).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_server_started_while_postgres_is_down_serves_and_picks_the_store_up_later() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/llmux");
    let app = spawn_admin_app(Some(url), |_| {}).await;
    assert_openai_error(app.admin(Method::GET, "/api/admin/keys", None).await, 503).await;
    let chat = app
        .app
        .http
        .post(app.app.url("/v1/chat/completions"))
        .bearer_auth(FILE_KEY)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        chat.status(),
        200,
        "requests a key file admits are served while the store is unreachable"
    );

    // initdb takes seconds: off the test's runtime, whose pooled connections must stay served.
    let _postgres = tokio::task::spawn_blocking(move || Postgres::start_on(port))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let response = app.admin(Method::GET, "/api/admin/keys", None).await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the store was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.admin_json(
        Method::POST,
        "/api/admin/keys",
        Some(json!({"name": "after-the-outage"})),
    )
    .await;
}

/// An llmux process, killed by its PID when the test ends.
struct Process {
    child: Child,
    port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_process(config_dir: &Path, database_url: &str) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args([
            "--port",
            "0",
            "--workers",
            "1",
            "--watch",
            "off",
            "--config-dir",
        ])
        .arg(config_dir)
        .env("LLMUX_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LLMUX_SELF_SERVICE_API", "true")
        .env("LLMUX_DATABASE_URL", database_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut process = Process { child, port: 0 };
    while started.elapsed() < Duration::from_secs(30) {
        match lines.recv_timeout(Duration::from_secs(30).saturating_sub(started.elapsed())) {
            Ok(line) if line.contains("llmux listening") => {
                let line: Value = serde_json::from_str(&line).unwrap();
                process.port = line["port"].as_u64().unwrap() as u16;
                return process;
            }
            Ok(_) => {}
            Err(error) => panic!("llmux did not start: {error}"),
        }
    }
    panic!("llmux did not start within 30 s");
}

#[tokio::test]
async fn a_key_minted_through_replica_a_proves_identity_on_replica_b_within_two_seconds() {
    let postgres = Postgres::start();
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        config_dir.path().join("provider.json"),
        provider_file("mock", "", &[("m", "target-m")])
            .to_string()
            .replace("{UPSTREAM}", "http://127.0.0.1:9"),
    )
    .unwrap();
    let replica_a = start_process(config_dir.path(), &postgres.url);
    let replica_b = start_process(config_dir.path(), &postgres.url);
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!(
            "http://127.0.0.1:{}/api/admin/keys",
            replica_a.port
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "shared", "owner_id": "alice"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let changed = Instant::now();
    let key = created["api_key"].as_str().unwrap();
    let on_b = format!("http://127.0.0.1:{}/api/keys", replica_b.port);
    loop {
        let status = http
            .get(&on_b)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "replica B did not see the key within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a revocation through B stops the key on A within 2 s.
    let id = created["id"].as_str().unwrap();
    let revoked = http
        .delete(format!(
            "http://127.0.0.1:{}/api/admin/keys/{id}",
            replica_b.port
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let changed = Instant::now();
    let on_a = format!("http://127.0.0.1:{}/api/keys", replica_a.port);
    while http
        .get(&on_a)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        == StatusCode::OK
    {
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "replica A still accepts a key revoked on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_cli(data_dir: &Path, args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["admin", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("LLMUX_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.success(), json, stderr)
}

#[tokio::test]
async fn the_admin_cli_creates_lists_and_revokes_keys_the_server_then_honours() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let (ok, created, stderr) = admin_cli(
        &data_dir,
        &[
            "keys",
            "create",
            "alice-laptop",
            "--owner",
            "alice",
            "--allowed-models",
            "m,openai/*",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
    );
    assert!(ok, "{stderr}");
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert_eq!(created["allowed_models"], json!(["m", "openai/*"]));
    let (ok, listed, _) = admin_cli(&data_dir, &["keys", "list"]);
    assert!(ok);
    assert_eq!(
        listed[0]["masked_key"],
        format!("llmux_…{}", &key[key.len() - 4..])
    );
    assert!(!listed.to_string().contains(&key));
    let (ok, _, stderr) = admin_cli(
        &data_dir,
        &["keys", "create", "x", "--allowed-operations", "chats"],
    );
    assert!(!ok && stderr.contains("chats"), "{stderr}");

    // The server on the same store accepts the key as an identity.
    let server_dir = data_dir.clone();
    let app = Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .args(move |args| {
            args.access.self_service_api = true;
            args.access.data_dir = server_dir;
        })
        .start()
        .await;
    let mine = app
        .http
        .get(app.url("/api/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);

    let id = created["id"].as_str().unwrap();
    let (ok, revoked, _) = admin_cli(&data_dir, &["keys", "revoke", id]);
    assert!(ok);
    assert_eq!(revoked["status"], "deleted");
    // The running server sees the revocation through the store within 2 s.
    let revoked_at = Instant::now();
    while app
        .http
        .get(app.url("/api/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status()
        == 200
    {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "the server still accepts a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, _, stderr) = admin_cli(&data_dir, &["keys", "revoke", id]);
    assert!(!ok && stderr.contains(id), "{stderr}");
    let (_, listed, _) = admin_cli(&data_dir, &["keys", "list"]);
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn a_key_name_a_key_file_already_uses_is_refused_with_409_before_anything_is_written() {
    const ALICE_FILE_KEY: &str = "llmux_alice-file-key-of-the-admin-tests";
    let digest = crate::mock::sha256_hex(ALICE_FILE_KEY.as_bytes());
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let app = Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .file(
            "keys.json",
            json!({"llmux_access": {"keys": [{"name": "alice-file", "key_sha256": digest}]}}),
        )
        .args(move |args| {
            args.access.admin_token = Some(ApiKey::new(ADMIN_TOKEN));
            args.access.self_service_api = true;
            args.access.data_dir = data_dir;
        })
        .start()
        .await;
    let app = AdminApp { app, _data: data };
    let assert_refused = |error: Value| {
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("key file") && message.contains("`alice-file`"),
            "{error}"
        );
        assert!(!message.contains(&digest) && !message.contains(ALICE_FILE_KEY));
        assert_eq!(error["code"], "conflict", "{error}");
    };

    // Admin API: refused, and nothing is written.
    let refused = app
        .admin(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "alice-file", "owner_id": "alice"})),
        )
        .await;
    assert_refused(assert_openai_error(refused, 409).await);
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/keys", None).await,
        json!([])
    );
    assert_eq!(
        app.admin_json(Method::GET, "/api/admin/audit", None).await,
        json!([])
    );

    // Another name is fine; self-service refuses the file key's name the same way.
    let seed = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "alice-seed", "owner_id": "alice"})),
        )
        .await;
    let seed_key = seed["api_key"].as_str().unwrap();
    let refused = app
        .call(
            Method::POST,
            "/api/keys",
            Some(seed_key),
            Some(json!({"name": "alice-file"})),
        )
        .await;
    assert_refused(assert_openai_error(refused, 409).await);
    let listed = app.admin_json(Method::GET, "/api/admin/keys", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "alice-seed");
    let audit = app.admin_json(Method::GET, "/api/admin/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.create"], "{audit}");
    assert!(!audit.to_string().contains("alice-file"), "{audit}");
}
