//! GET /v1/models, /v1/models/{model} and /health.
use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, provider_file, Spawn};

#[tokio::test]
async fn models_lists_every_exposed_name_with_its_provider() {
    let app = Spawn::new()
        .file("a.json", provider_file("alpha", "a/", &[("one", "x"), ("two", "y")]))
        .file("b.json", provider_file("beta", "", &[("meta-llama/Llama-3", "z")]))
        .start()
        .await;

    let models = app.openai().models().list().await.unwrap();

    let ids: Vec<(&str, &str)> = models.data.iter().map(|m| (m.id.as_str(), m.owned_by.as_str())).collect();
    assert_eq!(ids, [("a/one", "alpha"), ("a/two", "alpha"), ("meta-llama/Llama-3", "beta")]);
    assert_eq!(models.object, "list");
}

#[tokio::test]
async fn a_model_with_a_slash_is_retrieved_and_an_unknown_one_is_404() {
    let app = Spawn::new()
        .file("b.json", provider_file("beta", "", &[("meta-llama/Llama-3", "z")]))
        .start()
        .await;

    let model = app.openai().models().retrieve("meta-llama/Llama-3").await.unwrap();
    assert_eq!(model.id, "meta-llama/Llama-3");
    assert_eq!(model.owned_by, "beta");

    let missing = app.http.get(app.url("/v1/models/nope/nope")).send().await.unwrap();
    let error = assert_openai_error(missing, 404).await;
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test]
async fn health_answers_ok_without_touching_the_upstream() {
    let app = Spawn::new().file("b.json", provider_file("beta", "", &[("m", "z")])).start().await;
    let response = app.http.get(format!("http://127.0.0.1:{}/health", app.port)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(app.config_dir.path().join("b.json").exists());
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    assert!(app.upstream.requests().is_empty());
}

#[tokio::test]
async fn a_dir_whose_files_all_fail_still_serves_health_and_404s_models() {
    let app = Spawn::new()
        .file("broken.json", "{ \"p\": ")
        .file("wrong.json", json!({"p": {"models": 3}}))
        .start()
        .await;

    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let response = app.post_json("/v1/chat/completions", json!({"model": "m"})).await;
    assert_openai_error(response, 404).await;
    let models = app.openai().models().list().await.unwrap();
    assert!(models.data.is_empty());
}
