//! OIDC for the admin and self-service APIs, and for /v1 with `--oidc-v1`, against an in-test
//! identity provider.
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use llmux::cli::ServeArgs;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::admin_api::{spawn_admin_app, AdminApp, ADMIN_TOKEN};
use crate::helpers::{assert_openai_error, provider_file, Spawn, TestApp};
use crate::identity::{IdentityProvider, SigningKey};

fn oidc(
    provider: &IdentityProvider,
    edit: impl FnOnce(&mut ServeArgs) + 'static,
) -> impl FnOnce(&mut ServeArgs) + 'static {
    let issuer = provider.issuer.clone();
    move |args: &mut ServeArgs| {
        args.access.oidc_issuer = Some(issuer);
        args.access.oidc_audience = Some("llmux".into());
        args.access.oidc_role_claim = "realm_access.roles".into();
        args.access.oidc_fetch_timeout = Duration::from_secs(2);
        edit(args);
    }
}

async fn status(app: &AdminApp, method: Method, path: &str, token: &str) -> StatusCode {
    app.call(method, path, Some(token), None).await.status()
}

#[tokio::test]
async fn rs_and_es_tokens_with_nested_roles_tell_admins_from_users() {
    let keys = [
        SigningKey::rsa("rsa-a.der", "rsa-256", Algorithm::RS256),
        SigningKey::rsa("rsa-a.der", "rsa-384", Algorithm::RS384),
        SigningKey::rsa("rsa-b.der", "rsa-512", Algorithm::RS512),
        SigningKey::ec("ec-256", Algorithm::ES256),
        SigningKey::ec("ec-384", Algorithm::ES384),
    ];
    let provider = IdentityProvider::start(&keys.iter().collect::<Vec<_>>()).await;
    let app = spawn_admin_app(None, oidc(&provider, |_| {})).await;
    for key in &keys {
        let admin = key.sign(&provider.claims("root", &["llmux-admin"]));
        assert_eq!(
            status(&app, Method::GET, "/api/admin/health", &admin).await,
            200,
            "{:?}",
            key.algorithm
        );
        let user = key.sign(&provider.claims("alice", &["user"]));
        assert_openai_error(
            app.call(Method::GET, "/api/admin/keys", Some(&user), None)
                .await,
            403,
        )
        .await;
        assert_eq!(
            status(&app, Method::GET, "/api/keys", &user).await,
            200,
            "{:?}",
            key.algorithm
        );
    }
    assert_eq!(provider.discovery_fetches(), 1);
    assert_eq!(
        provider.jwks_fetches(),
        1,
        "one fetch serves every cached key"
    );

    // An OIDC user's keys belong to `oidc:<sub>`, and the audit names them.
    let alice = keys[3].sign(&provider.claims("alice", &[]));
    let created: Value = app
        .call(
            Method::POST,
            "/api/keys",
            Some(&alice),
            Some(json!({"name": "alice-cli"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["owner_id"], "oidc:alice", "{created}");
    let bob = keys[0].sign(&provider.claims("bob", &[]));
    let bobs: Value = app
        .call(Method::GET, "/api/keys", Some(&bob), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bobs, json!([]));
    let audit = app.admin_json(Method::GET, "/api/admin/audit", None).await;
    assert_eq!(audit[0]["actor"], "oidc:alice");
    let config = app
        .admin_json(Method::GET, "/api/admin/auth-config", None)
        .await;
    assert_eq!(config["admin"]["mode"], "hybrid");
    assert_eq!(config["self_service"]["mode"], "oidc-or-key");
    assert_eq!(config["claim_mappings"]["role_claim"], "realm_access.roles");
}

#[tokio::test]
async fn expired_foreign_and_forged_tokens_are_refused() {
    let key = SigningKey::rsa("rsa-a.der", "a", Algorithm::RS256);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_admin_app(None, oidc(&provider, |_| {})).await;
    let valid = provider.claims("root", &["llmux-admin"]);
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &key.sign(&valid)).await,
        200
    );

    let mut expired = valid.clone();
    expired["exp"] = json!(llmux::store::now() - 120);
    let mut wrong_audience = valid.clone();
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = valid.clone();
    wrong_issuer["iss"] = json!("http://127.0.0.1:1/realms/evil");
    let mut no_subject = valid.clone();
    no_subject.as_object_mut().unwrap().remove("sub");
    for (what, claims) in [
        ("expired", expired),
        ("audience", wrong_audience),
        ("issuer", wrong_issuer),
        ("subject", no_subject),
    ] {
        let response = app
            .call(
                Method::GET,
                "/api/admin/health",
                Some(&key.sign(&claims)),
                None,
            )
            .await;
        assert_eq!(response.status(), 401, "{what}");
        let response = app
            .call(Method::GET, "/api/keys", Some(&key.sign(&claims)), None)
            .await;
        assert_eq!(response.status(), 401, "{what}");
    }
    // Signed by a key the provider never published, HMAC with a guessable secret, or unsigned.
    let stranger = SigningKey::rsa("rsa-b.der", "a", Algorithm::RS256);
    let mut hmac_header = Header::new(Algorithm::HS256);
    hmac_header.kid = Some("a".into());
    let hmac =
        jsonwebtoken::encode(&hmac_header, &valid, &EncodingKey::from_secret(b"secret")).unwrap();
    let unsigned = {
        let mut parts: Vec<&str> = hmac.split('.').collect();
        let none = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","kid":"a"}"#,
        );
        parts[0] = &none;
        format!("{}.{}.", parts[0], parts[1])
    };
    for (what, token) in [
        ("stranger", stranger.sign(&valid)),
        ("hmac", hmac),
        ("none", unsigned),
    ] {
        assert_eq!(
            status(&app, Method::GET, "/api/admin/health", &token).await,
            401,
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_unknown_kid_and_cached_keys_are_not_refetched() {
    let old = SigningKey::rsa("rsa-a.der", "2026-01", Algorithm::RS256);
    let new = SigningKey::ec("2026-02", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&old]).await;
    let app = spawn_admin_app(None, oidc(&provider, |_| {})).await;
    let admin = |key: &SigningKey| key.sign(&provider.claims("root", &["llmux-admin"]));
    for _ in 0..5 {
        assert_eq!(
            status(&app, Method::GET, "/api/admin/health", &admin(&old)).await,
            200
        );
    }
    assert_eq!(provider.jwks_fetches(), 1);

    provider.publish(&[&new]);
    // Refreshes are at most one a second: let the first fetch's second pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &admin(&new)).await,
        200
    );
    assert_eq!(provider.jwks_fetches(), 2);
    for _ in 0..5 {
        assert_eq!(
            status(&app, Method::GET, "/api/admin/health", &admin(&new)).await,
            200
        );
    }
    assert_eq!(provider.jwks_fetches(), 2, "the new key is cached");
    // The old key left the JWKS: its tokens stop working.
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &admin(&old)).await,
        401
    );

    // A burst of unknown kids costs at most one more fetch.
    let bursts: Vec<String> = (0..10)
        .map(|i| {
            SigningKey::ec(&format!("bogus-{i}"), Algorithm::ES256)
                .sign(&provider.claims("x", &["llmux-admin"]))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answers = futures_util::future::join_all(
        bursts
            .iter()
            .map(|token| app.call(Method::GET, "/api/admin/health", Some(token), None)),
    )
    .await;
    assert!(answers.iter().all(|answer| answer.status() == 401));
    assert!(
        provider.jwks_fetches() <= 3,
        "{} fetches",
        provider.jwks_fetches()
    );
}

#[tokio::test]
async fn a_hanging_identity_provider_slows_no_other_credential() {
    let cached = SigningKey::rsa("rsa-a.der", "cached", Algorithm::RS256);
    let unknown = SigningKey::ec("unknown", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&cached]).await;
    let app = spawn_admin_app(None, oidc(&provider, |_| {})).await;
    let cached_token = cached.sign(&provider.claims("root", &["llmux-admin"]));
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &cached_token).await,
        200
    );
    let seed = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "seed"})),
        )
        .await;
    let llmux_key = seed["api_key"].as_str().unwrap().to_owned();

    provider.hang();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown_token = unknown.sign(&provider.claims("root", &["llmux-admin"]));
    let started = Instant::now();
    let stuck = app.call(Method::GET, "/api/admin/health", Some(&unknown_token), None);
    let others = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            for (path, token) in [
                ("/api/admin/health", ADMIN_TOKEN),
                ("/api/admin/health", cached_token.as_str()),
                ("/api/keys", llmux_key.as_str()),
            ] {
                let sent = Instant::now();
                assert_eq!(status(&app, Method::GET, path, token).await, 200, "{path}");
                slowest = slowest.max(sent.elapsed());
            }
        }
        slowest
    };
    let (stuck, slowest) = tokio::join!(stuck, others);
    assert!(
        slowest < Duration::from_millis(500),
        "another credential waited {slowest:?}"
    );
    assert_eq!(stuck.status(), 401);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn oidc_only_self_service_refuses_llmux_keys_as_identity() {
    let key = SigningKey::rsa("rsa-a.der", "a", Algorithm::RS256);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_admin_app(
        None,
        oidc(&provider, |args| args.access.self_service_oidc_only = true),
    )
    .await;
    let seed = app
        .admin_json(
            Method::POST,
            "/api/admin/keys",
            Some(json!({"name": "seed"})),
        )
        .await;
    assert_openai_error(
        app.call(
            Method::GET,
            "/api/keys",
            Some(seed["api_key"].as_str().unwrap()),
            None,
        )
        .await,
        401,
    )
    .await;
    assert_eq!(
        status(
            &app,
            Method::GET,
            "/api/keys",
            &key.sign(&provider.claims("alice", &[]))
        )
        .await,
        200
    );
    let config = app
        .admin_json(Method::GET, "/api/admin/auth-config", None)
        .await;
    assert_eq!(config["self_service"]["mode"], "oidc-only");
}

#[tokio::test]
async fn oidc_only_admin_and_self_service_values_gate_the_apis() {
    let key = SigningKey::ec("a", Algorithm::ES384);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_admin_app(
        None,
        oidc(&provider, |args| {
            args.access.admin_token = None;
            args.access.admin_oidc_only = true;
            args.access.oidc_group_claim = "groups".into();
            args.access.oidc_admin_values = vec!["ops".into()];
            args.access.oidc_self_service_values = vec!["staff".into()];
        }),
    )
    .await;
    let mut ops = provider.claims("root", &[]);
    ops["groups"] = json!(["ops"]);
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &key.sign(&ops)).await,
        200
    );
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", ADMIN_TOKEN).await,
        401
    );
    let staff = key.sign(&provider.claims("alice", &["staff"]));
    let outsider = key.sign(&provider.claims("eve", &["guest"]));
    assert_eq!(status(&app, Method::GET, "/api/keys", &staff).await, 200);
    assert_eq!(status(&app, Method::GET, "/api/keys", &outsider).await, 403);
}

#[tokio::test]
async fn keys_are_fetched_before_the_first_token_and_dropped_keys_expire_with_the_jwks_max_age() {
    let old = SigningKey::rsa("rsa-a.der", "old", Algorithm::RS256);
    let new = SigningKey::ec("new", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&old]).await;
    let app = spawn_admin_app(
        None,
        oidc(&provider, |args| {
            args.access.oidc_jwks_max_age = Duration::from_millis(1500)
        }),
    )
    .await;
    let started = Instant::now();
    while provider.jwks_fetches() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no fetch before the first token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_token = old.sign(&provider.claims("root", &["llmux-admin"]));
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &old_token).await,
        200
    );
    assert_eq!(provider.jwks_fetches(), 1);

    // The provider drops the old key (say it leaked): no unknown kid tells llmux, the max age does.
    provider.publish(&[&new]);
    let dropped = Instant::now();
    while status(&app, Method::GET, "/api/admin/health", &old_token).await == 200 {
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "a dropped key still verifies"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(provider.jwks_fetches() >= 2);
    let new_token = new.sign(&provider.claims("root", &["llmux-admin"]));
    assert_eq!(
        status(&app, Method::GET, "/api/admin/health", &new_token).await,
        200
    );
}

/// llmux with OIDC bearer tokens on /v1 (`--oidc-v1`): OIDC callers may use model `m` (not
/// `other`), 3 requests a minute each, plus what `access` (a key file) says.
async fn spawn_oidc_v1(provider: &IdentityProvider, access: Value) -> TestApp {
    let edit = oidc(provider, |args| {
        args.access.oidc_v1 = true;
        args.access.oidc_v1_allowed_models = vec!["m".into()];
        args.access.oidc_v1_requests_per_minute = Some(3);
    });
    Spawn::new()
        .admin_token()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m"), ("other", "target-o")]),
        )
        .file("keys.json", access)
        .args(edit)
        .start()
        .await
}

async fn chat(app: &TestApp, token: &str, model: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

fn no_keys() -> Value {
    json!({"llmux_access": {"keys": []}})
}

#[tokio::test]
async fn an_oidc_token_on_v1_is_a_caller_owned_by_oidc_sub_with_the_default_models_and_limits() {
    let key = SigningKey::rsa("rsa-a.der", "v1", Algorithm::RS256);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_oidc_v1(&provider, no_keys()).await;
    let alice = key.sign(&provider.claims("alice", &["user"]));
    let bob = key.sign(&provider.claims("bob", &[]));

    for _ in 0..3 {
        assert_eq!(chat(&app, &alice, "m").await.status(), 200);
    }
    let limited = assert_openai_error(chat(&app, &alice, "m").await, 429).await;
    assert_eq!(limited["code"], "rate_limit_exceeded", "{limited}");
    // Each owner has its own counter.
    assert_eq!(chat(&app, &bob, "m").await.status(), 200);
    // A model outside the defaults does not exist for an OIDC caller.
    let hidden = assert_openai_error(chat(&app, &bob, "other").await, 404).await;
    let missing = assert_openai_error(chat(&app, &bob, "no-such-model").await, 404).await;
    assert_eq!(hidden["code"], missing["code"]);
    let models: Value = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m"]);
    // The caller's token never goes upstream.
    for request in app.upstream.requests() {
        for (name, value) in &request.headers {
            assert!(!value.contains(&alice) && !value.contains(&bob), "{name}");
        }
    }
}

#[tokio::test]
async fn a_v1_token_that_fails_verification_is_the_same_401_as_an_invalid_key() {
    let key = SigningKey::rsa("rsa-a.der", "v1", Algorithm::RS256);
    let stranger = SigningKey::ec("not-published", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_oidc_v1(&provider, no_keys()).await;
    let mut expired = provider.claims("alice", &[]);
    expired["exp"] = json!(llmux::store::now() - 600);
    let mut wrong_audience = provider.claims("alice", &[]);
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = provider.claims("alice", &[]);
    wrong_issuer["iss"] = json!("http://127.0.0.1:1/realms/other");

    let invalid_key = assert_openai_error(chat(&app, "llmux_not_a_key", "m").await, 401).await;
    for (what, token) in [
        ("expired", key.sign(&expired)),
        ("wrong audience", key.sign(&wrong_audience)),
        ("wrong issuer", key.sign(&wrong_issuer)),
        ("unknown kid", stranger.sign(&provider.claims("alice", &[]))),
    ] {
        let refused = assert_openai_error(chat(&app, &token, "m").await, 401).await;
        assert_eq!(refused, invalid_key, "{what}");
    }
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn quota_policies_and_overrides_apply_to_oidc_owners() {
    let key = SigningKey::ec("v1", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&key]).await;
    let access = json!({"llmux_access": {
        "keys": [],
        "quota_policies": [{"api_path": "/v1/chat/completions", "model": "m",
                            "window_type": "minute", "request_limit": 1}],
        "quota_overrides": [{"api_path": "/v1/chat/completions", "model": "m",
                             "owner_id": "oidc:carol", "window_type": "minute", "exempt": true}]
    }});
    let app = spawn_oidc_v1(&provider, access).await;
    let carol = key.sign(&provider.claims("carol", &[]));
    let dave = key.sign(&provider.claims("dave", &[]));

    assert_eq!(chat(&app, &dave, "m").await.status(), 200);
    assert_openai_error(chat(&app, &dave, "m").await, 429).await;
    for _ in 0..3 {
        assert_eq!(
            chat(&app, &carol, "m").await.status(),
            200,
            "carol is exempt"
        );
    }
}

#[tokio::test]
async fn an_unknown_kid_waiting_on_a_hung_provider_slows_no_v1_caller_with_a_known_key() {
    let cached = SigningKey::rsa("rsa-a.der", "cached", Algorithm::RS256);
    let unknown = SigningKey::ec("unknown", Algorithm::ES256);
    let provider = IdentityProvider::start(&[&cached]).await;
    let app = spawn_oidc_v1(&provider, no_keys()).await;
    let users: Vec<String> = ["u1", "u2", "u3"]
        .iter()
        .map(|user| cached.sign(&provider.claims(user, &[])))
        .collect();
    assert_eq!(chat(&app, &users[0], "m").await.status(), 200);

    provider.hang();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown_token = unknown.sign(&provider.claims("eve", &[]));
    let started = Instant::now();
    let stuck = chat(&app, &unknown_token, "m");
    let others = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut slowest = Duration::ZERO;
        for user in &users {
            for _ in 0..2 {
                let sent = Instant::now();
                assert_eq!(chat(&app, user, "m").await.status(), 200);
                slowest = slowest.max(sent.elapsed());
            }
        }
        slowest
    };
    let (stuck, slowest) = tokio::join!(stuck, others);
    assert!(
        slowest < Duration::from_millis(500),
        "a caller with a known key waited {slowest:?}"
    );
    assert_openai_error(stuck, 401).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refresh is bounded by the fetch timeout"
    );
}

#[tokio::test]
async fn an_oidc_admin_passes_the_same_gate_on_admin_config_and_the_status_page() {
    let key = SigningKey::rsa("rsa-a.der", "gate", Algorithm::RS256);
    let provider = IdentityProvider::start(&[&key]).await;
    let app = spawn_admin_app(
        None,
        oidc(&provider, |args| {
            args.access_control = llmux::access::AccessMode::On;
        }),
    )
    .await;
    let admin = key.sign(&provider.claims("root", &["llmux-admin"]));
    let user = key.sign(&provider.claims("alice", &["user"]));
    let get = |path: &'static str, token: String| {
        let app = &app;
        async move {
            app.app
                .http
                .get(app.app.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };

    for path in ["/admin/config", "/status.json"] {
        assert_eq!(get(path, admin.clone()).await.status(), 200, "{path}");
        assert_eq!(
            get(path, ADMIN_TOKEN.to_owned()).await.status(),
            200,
            "{path}"
        );
        // A valid token without the admin role looks exactly like a wrong token here.
        let not_admin = assert_openai_error(get(path, user.clone()).await, 401).await;
        let wrong = assert_openai_error(get(path, "wrong-token".to_owned()).await, 401).await;
        assert_eq!(not_admin, wrong, "{path}");
    }
    // The admin API keeps fast-openai-api-proxy's 403 for a valid non-admin token.
    assert_openai_error(get("/api/admin/keys", user).await, 403).await;
}
