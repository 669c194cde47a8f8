//! One admin credential (issue 19): read once, from `--admin-token` / `LLMUX_ADMIN_TOKEN` or a
//! file, and checked by one gate in front of `/admin/*`, the admin API and the status page.
use std::sync::Arc;

use llmux::cli::ServeArgs;
use llmux::secret::ApiKey;
use llmux::startup::{Application, EnvSource};

use crate::helpers::{assert_openai_error, provider_file, Spawn, TestApp};

const FILE_TOKEN: &str = "token-from-a-file-0123456789";

async fn status(app: &TestApp, path: &str, token: &str) -> u16 {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_token_file_is_the_one_credential_of_admin_config_the_admin_api_and_the_status_page() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("admin-token");
    std::fs::write(&file, format!("{FILE_TOKEN}\n")).unwrap();
    let data_dir = secrets.path().join("data");
    let app = Spawn::new()
        .file("provider.json", provider_file("mock", "", &[("m", "t")]))
        .args(move |args| {
            args.access.admin_token_file = Some(file);
            args.access.data_dir = data_dir;
            args.access_control = llmux::access::AccessMode::On;
        })
        .start()
        .await;

    for path in ["/admin/config", "/api/admin/health", "/status.json"] {
        assert_eq!(status(&app, path, FILE_TOKEN).await, 200, "{path}");
        for wrong in [&FILE_TOKEN[1..], &format!("{FILE_TOKEN}x"), "x"] {
            assert_eq!(status(&app, path, wrong).await, 401, "{path} {wrong:?}");
        }
    }
    let audit = app
        .http
        .get(app.url("/api/admin/audit"))
        .bearer_auth(FILE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(audit.status(), 200);
}

fn build(edit: impl FnOnce(&mut ServeArgs), env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::new(dir.path());
    args.access.data_dir = dir.path().join("data");
    edit(&mut args);
    let env: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let env: EnvSource = Arc::new(move |name| env.get(name).cloned());
    let error = Application::build_with_env(args, env)
        .err()
        .expect("start-up fails");
    format!("{error:#}")
}

#[tokio::test]
async fn a_token_and_a_token_file_together_or_a_short_token_refuse_to_start_naming_the_settings() {
    let both = build(
        |args| args.access.admin_token = Some(ApiKey::new("a-long-enough-admin-token")),
        &[("LLMUX_ADMIN_TOKEN_FILE", "/run/secrets/admin")],
    );
    assert!(
        both.contains("LLMUX_ADMIN_TOKEN") && both.contains("LLMUX_ADMIN_TOKEN_FILE"),
        "{both}"
    );
    assert!(both.contains("not both"), "{both}");
    let short = build(|_| {}, &[("LLMUX_ADMIN_TOKEN", "too-short")]);
    assert!(short.contains("at least 16"), "{short}");
    assert!(
        !short.contains("too-short"),
        "the token is never echoed: {short}"
    );
}

#[tokio::test]
async fn without_any_admin_credential_admin_config_says_how_to_set_one() {
    let app = Spawn::new()
        .file("provider.json", provider_file("mock", "", &[("m", "t")]))
        .start()
        .await;

    let error = assert_openai_error(app.get("/admin/config").await, 503).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("LLMUX_ADMIN_TOKEN"), "{error}");
    // The admin API is not mounted at all: a URL llmux does not have.
    assert_openai_error(app.get("/api/admin/health").await, 404).await;
}
