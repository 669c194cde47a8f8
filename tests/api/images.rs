//! Binary and streamed answers, and the image-data cache (issue #3).
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, Reply, Spawn, TestApp, PROVIDER_KEY};
use crate::uploads::{spawn_upload_app, upload_provider};

/// A tiny PNG-looking image: the magic, then bytes that are not UTF-8.
fn png(seed: u8, len: usize) -> Bytes {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 0x80));
    Bytes::from(bytes)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `m` as `upload_provider`, and `b64` whose endpoints only answer base64 (and which has no
/// `v1/images/data` endpoint: its images only live in llmux's cache).
async fn spawn_image_app(edit: impl FnOnce(&mut llmux::cli::ServeArgs) + 'static) -> TestApp {
    let mut file = upload_provider(json!({}));
    let b64 = upload_provider(json!({"upstream_image_format": "b64_json"}));
    let mut b64_model = b64["mock"]["models"]["m"].clone();
    b64_model["endpoints"]
        .as_array_mut()
        .unwrap()
        .retain(|endpoint| endpoint["path"] != "v1/images/data");
    file["mock"]["models"]["b64"] = b64_model;
    Spawn::new()
        .file("images.json", file)
        .args(edit)
        .start()
        .await
}

async fn generate(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/v1/images/generations", body).await;
    assert_eq!(response.status(), 200);
    // Issue 12: image generations go through the attempt loop and say so.
    assert_eq!(response.headers()["x-llmux-attempts"], "1");
    assert!(response.headers().contains_key("x-llmux-upstream"));
    response.json().await.unwrap()
}

async fn get(app: &TestApp, url: &str) -> reqwest::Response {
    app.http.get(url).send().await.unwrap()
}

#[tokio::test]
async fn speech_answers_stream_back_as_bytes_with_their_content_type() {
    let app = spawn_upload_app().await;
    let audio = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());
    for content_type in [
        "audio/mpeg",
        "audio/opus",
        "audio/aac",
        "audio/flac",
        "audio/wav",
        "audio/pcm",
    ] {
        app.upstream.push(Reply::Bytes {
            status: 200,
            content_type: content_type.into(),
            body: audio.clone(),
        });
        let response = app
            .post_json(
                "/v1/audio/speech",
                json!({"model": "m", "input": "Hallo", "voice": "alloy"}),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.bytes().await.unwrap(), audio);
    }
    assert_eq!(app.upstream.last_request().json()["model"], "target-m");
}

#[tokio::test]
async fn speech_with_sse_stream_format_streams_events() {
    let app = spawn_upload_app().await;
    app.upstream.push(Reply::Sse {
        events: vec![
            json!({"type": "speech.audio.delta", "audio": "AAEC"}).to_string(),
            json!({"type": "speech.audio.done"}).to_string(),
        ],
        gap: Duration::from_millis(20),
    });
    let response = app
        .post_json(
            "/v1/audio/speech",
            json!({"model": "m", "input": "Hi", "voice": "alloy", "stream_format": "sse"}),
        )
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("speech.audio.delta") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
}

#[tokio::test]
async fn every_transcription_response_format_passes_through_with_its_content_type() {
    let app = spawn_upload_app().await;
    for (format, content_type, body) in [
        ("json", "application/json", r#"{"text":"hi"}"#),
        ("text", "text/plain; charset=utf-8", "hi\n"),
        (
            "srt",
            "application/x-subrip",
            "1\n00:00:00,000 --> 00:00:01,000\nhi\n",
        ),
        (
            "verbose_json",
            "application/json",
            r#"{"task":"transcribe","language":"english","duration":1.0,"text":"hi","segments":[]}"#,
        ),
        (
            "vtt",
            "text/vtt; charset=utf-8",
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhi\n",
        ),
    ] {
        app.upstream.push(Reply::Raw {
            status: 200,
            content_type: content_type.into(),
            body: body.into(),
            headers: Vec::new(),
        });
        let form = Form::new()
            .text("model", "m")
            .text("response_format", format)
            .part(
                "file",
                Part::bytes(b"RIFF0000WAVE".to_vec()).file_name("a.wav"),
            );
        let response = app
            .http
            .post(app.url("/v1/audio/transcriptions"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type, "{format}");
        assert_eq!(response.text().await.unwrap(), body, "{format}");
        let upload = app.upstream.uploads().pop().unwrap();
        assert_eq!(upload.part("response_format").text.as_deref(), Some(format));
    }
}

#[tokio::test]
async fn streamed_transcriptions_and_image_generations_stream_sse() {
    let app = spawn_upload_app().await;
    app.upstream.push(Reply::Sse {
        events: vec![json!({"type": "transcript.text.delta", "delta": "hi"}).to_string()],
        gap: Duration::from_millis(10),
    });
    let form = Form::new()
        .text("model", "m")
        .text("stream", "true")
        .part("file", Part::bytes(b"RIFF".to_vec()).file_name("a.wav"));
    let response = app
        .http
        .post(app.url("/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("transcript.text.delta"));

    app.upstream.push(Reply::Sse {
        events: vec![
            json!({"type": "image_generation.partial_image", "b64_json": b64(&png(1, 10))})
                .to_string(),
        ],
        gap: Duration::from_millis(10),
    });
    let response = app
        .post_json(
            "/v1/images/generations",
            json!({"model": "m", "prompt": "a cat", "stream": true, "partial_images": 1}),
        )
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("image_generation.partial_image"));
}

#[tokio::test]
async fn proxy_image_urls_are_rewritten_and_fetched_from_the_model_then_cached() {
    let app = spawn_image_app(|_| {}).await;
    let image = png(7, 5_000);
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"url": format!("{}/v1/images/data/file-abc", app.address)}]}),
    ));
    let answer = generate(&app, json!({"model": "m", "prompt": "a cat"})).await;
    let url = answer["data"][0]["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/v1/images/data/m/file-abc", app.address));

    app.upstream.push(Reply::Bytes {
        status: 200,
        content_type: "application/octet-stream".into(),
        body: image.clone(),
    });
    let response = get(&app, url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    assert_eq!(response.bytes().await.unwrap(), image);
    let fetch = app.upstream.last_request();
    assert_eq!(
        (fetch.method.as_str(), fetch.uri.as_str()),
        ("GET", "/v1/images/data/file-abc")
    );
    assert_eq!(
        fetch.header("authorization"),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );

    let upstream_calls = app.upstream.requests().len();
    assert_eq!(
        get(&app, url).await.bytes().await.unwrap(),
        image,
        "served from the cache"
    );
    let revalidated = app
        .http
        .get(url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert_eq!(app.upstream.requests().len(), upstream_calls);
}

#[tokio::test]
async fn b64_only_upstreams_are_asked_for_b64_json_and_answered_with_cached_urls() {
    let app = spawn_image_app(|_| {}).await;
    let image = png(9, 4_000);
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"b64_json": b64(&image), "revised_prompt": "cat"}]}),
    ));

    let answer = generate(&app, json!({"model": "b64", "prompt": "a cat", "n": 1})).await;

    let sent = app.upstream.last_request().json();
    assert_eq!(sent["response_format"], "b64_json");
    assert_eq!(sent["model"], "target-m");
    let url = answer["data"][0]["url"].as_str().unwrap();
    let id = url
        .strip_prefix(&format!("{}/v1/images/data/b64/", app.address))
        .unwrap();
    assert_eq!(id.len(), 22);
    assert!(answer["data"][0].get("b64_json").is_none());
    assert_eq!(answer["data"][0]["revised_prompt"], "cat");
    let response = get(&app, url).await;
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap(), image);

    // A client that asked for b64_json gets it unchanged.
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"b64_json": b64(&image)}]}),
    ));
    let answer = generate(
        &app,
        json!({"model": "b64", "prompt": "a cat", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(answer["data"][0]["b64_json"], b64(&image));
}

#[tokio::test]
async fn b64_only_upstreams_get_response_format_in_image_edits_too() {
    let app = spawn_image_app(|_| {}).await;
    let image = png(3, 1_000);
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"b64_json": b64(&image)}]}),
    ));
    let form = Form::new()
        .part(
            "image",
            Part::bytes(png(1, 100).to_vec()).file_name("in.png"),
        )
        .text("prompt", "hat")
        .text("model", "b64");

    let response = app
        .http
        .post(app.url("/v1/images/edits"))
        .multipart(form)
        .send()
        .await
        .unwrap();

    let answer: Value = response.json().await.unwrap();
    let url = answer["data"][0]["url"].as_str().unwrap();
    assert_eq!(get(&app, url).await.bytes().await.unwrap(), image);
    let upload = app.upstream.uploads().pop().unwrap();
    let names: Vec<&str> = upload.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["image", "prompt", "model", "response_format"]);
    assert_eq!(
        upload.part("response_format").text.as_deref(),
        Some("b64_json")
    );
}

#[tokio::test]
async fn the_least_recently_used_image_is_evicted_when_the_cache_is_full() {
    let app = spawn_image_app(|args| args.image_cache_bytes = 25_000).await;
    let mut urls = Vec::new();
    for seed in 0..3 {
        app.upstream.push(Reply::json(
            200,
            json!({"created": 1, "data": [{"b64_json": b64(&png(seed, 10_000))}]}),
        ));
        let answer = generate(&app, json!({"model": "b64", "prompt": "x"})).await;
        urls.push(answer["data"][0]["url"].as_str().unwrap().to_owned());
    }
    let error = assert_openai_error(get(&app, &urls[0]).await, 404).await;
    assert_eq!(error["code"], "image_not_found");
    assert_eq!(get(&app, &urls[1]).await.status(), 200);
    assert_eq!(get(&app, &urls[2]).await.status(), 200);
}

#[tokio::test]
async fn images_are_gone_after_the_ttl() {
    let app = spawn_image_app(|args| args.image_cache_ttl = Duration::from_millis(300)).await;
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"b64_json": b64(&png(1, 100))}]}),
    ));
    let answer = generate(&app, json!({"model": "b64", "prompt": "x"})).await;
    let url = answer["data"][0]["url"].as_str().unwrap();
    assert_eq!(get(&app, url).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_openai_error(get(&app, url).await, 404).await;
}

#[tokio::test]
async fn an_image_is_a_404_under_another_model() {
    let app = spawn_image_app(|_| {}).await;
    app.upstream.push(Reply::json(
        200,
        json!({"created": 1, "data": [{"b64_json": b64(&png(1, 100))}]}),
    ));
    let answer = generate(&app, json!({"model": "b64", "prompt": "x"})).await;
    let url = answer["data"][0]["url"].as_str().unwrap();
    let id = url.rsplit('/').next().unwrap();
    let upstream_calls = app.upstream.requests().len();
    // `nope` is no model; `m` is, but its upstream has no such image.
    app.upstream.push(Reply::json(404, json!({"error": {"message": "no such file", "type": "invalid_request_error", "param": null, "code": null}})));
    assert_openai_error(
        get(&app, &app.url(&format!("/v1/images/data/nope/{id}"))).await,
        404,
    )
    .await;
    assert_openai_error(
        get(&app, &app.url(&format!("/v1/images/data/m/{id}"))).await,
        404,
    )
    .await;
    assert_eq!(
        app.upstream.requests().len(),
        upstream_calls + 1,
        "only `m` asked its upstream"
    );
}

#[tokio::test]
async fn an_unknown_upstream_image_format_is_a_config_error() {
    let file = upload_provider(json!({"upstream_image_format": "png"}));
    let app = Spawn::new().file("images.json", file).start().await;
    let response = app
        .post_json(
            "/v1/images/generations",
            json!({"model": "m", "prompt": "x"}),
        )
        .await;
    assert_openai_error(response, 404).await;
    assert!(app.upstream.requests().is_empty());
}
