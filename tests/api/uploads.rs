//! Multipart uploads (issue #3): the rewritten body, byte-identical files, field order, spooling,
//! limits and memory.
use std::time::{Duration, Instant};

use async_openai::types::{
    AudioInput, CreateImageEditRequestArgs, CreateImageVariationRequestArgs,
    CreateTranscriptionRequestArgs, CreateTranslationRequestArgs, Image, ImageInput, ImageModel,
};
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::Digest;

use crate::helpers::{assert_openai_error, Spawn, TestApp, PROVIDER_KEY};
use crate::mock::{sha256_hex, ReceivedPart};

pub const UPLOAD_PATHS: [&str; 4] = [
    "v1/audio/transcriptions",
    "v1/audio/translations",
    "v1/images/edits",
    "v1/images/variations",
];

/// Model `m` (target `target-m`): uploads go to the mock's draining route, JSON paths and image
/// data to the mock itself. `extra` is merged into every endpoint.
pub fn upload_provider(extra: Value) -> Value {
    let mut endpoints: Vec<Value> = UPLOAD_PATHS
        .iter()
        .map(|path| json!({"path": path, "target_model_name": "target-m", "target_base_url": "{UPSTREAM}/drain"}))
        .collect();
    for path in ["v1/audio/speech", "v1/images/generations", "v1/images/data"] {
        endpoints.push(json!({"path": path, "target_model_name": "target-m"}));
    }
    for endpoint in &mut endpoints {
        for (key, value) in extra.as_object().unwrap() {
            endpoint[key] = value.clone();
        }
    }
    json!({"mock": {
        "api_key_variable": "TEST_PROVIDER_KEY",
        "target_base_url": "{UPSTREAM}",
        "request_timeout": 120,
        "models": {"m": {"endpoints": endpoints}}
    }})
}

pub async fn spawn_upload_app() -> TestApp {
    Spawn::new()
        .file("uploads.json", upload_provider(json!({})))
        .start()
        .await
}

/// Deterministic pseudo-random bytes (not valid UTF-8, every byte value).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn text_part(name: &str, text: &str) -> ReceivedPart {
    ReceivedPart {
        name: name.into(),
        filename: None,
        content_type: None,
        len: text.len() as u64,
        sha256: sha256_hex(text.as_bytes()),
        text: Some(text.into()),
    }
}

fn file_part(name: &str, filename: &str, content_type: &str, bytes: &[u8]) -> ReceivedPart {
    ReceivedPart {
        name: name.into(),
        filename: Some(filename.into()),
        content_type: Some(content_type.into()),
        len: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        text: (bytes.len() < 4096)
            .then(|| String::from_utf8(bytes.to_vec()).ok())
            .flatten(),
    }
}

fn file(name: &str, bytes: &[u8], content_type: &str) -> Part {
    Part::bytes(bytes.to_vec())
        .file_name(name.to_owned())
        .mime_str(content_type)
        .unwrap()
}

#[tokio::test]
async fn transcription_through_async_openai_sends_the_identical_file_and_the_target_model() {
    let app = spawn_upload_app().await;
    let audio = noise(300_000, 1);
    let request = CreateTranscriptionRequestArgs::default()
        .file(AudioInput::from_vec_u8("speech.wav".into(), audio.clone()))
        .model("m")
        .language("de")
        .prompt("Grüße")
        .build()
        .unwrap();

    let response = app.openai().audio().transcribe(request).await.unwrap();

    assert_eq!(response.text, "heard by target-m");
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(upload.uri, "/drain/v1/audio/transcriptions");
    assert_eq!(
        upload.authorization.as_deref(),
        Some(&*format!("Bearer {PROVIDER_KEY}"))
    );
    assert_eq!(upload.part("file").sha256, sha256_hex(&audio));
    assert_eq!(upload.part("file").filename.as_deref(), Some("speech.wav"));
    assert_eq!(upload.part("model").text.as_deref(), Some("target-m"));
    assert_eq!(upload.part("language").text.as_deref(), Some("de"));
    assert_eq!(upload.part("prompt").text.as_deref(), Some("Grüße"));
}

#[tokio::test]
async fn translation_through_async_openai_reaches_the_target_model() {
    let app = spawn_upload_app().await;
    let audio = noise(50_000, 2);
    let request = CreateTranslationRequestArgs::default()
        .file(AudioInput::from_vec_u8("clip.mp3".into(), audio.clone()))
        .model("m")
        .build()
        .unwrap();

    let response = app.openai().audio().translate(request).await.unwrap();

    assert_eq!(response.text, "heard by target-m");
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(upload.uri, "/drain/v1/audio/translations");
    assert_eq!(upload.part("file").sha256, sha256_hex(&audio));
}

#[tokio::test]
async fn image_edit_through_async_openai_with_the_model_after_the_files() {
    let app = spawn_upload_app().await;
    let (image, mask) = (noise(200_000, 3), noise(100_000, 4));
    let request = CreateImageEditRequestArgs::default()
        .image(ImageInput::from_vec_u8("cat.png".into(), image.clone()))
        .mask(ImageInput::from_vec_u8("mask.png".into(), mask.clone()))
        .prompt("add a hat")
        .model(ImageModel::Other("m".into()))
        .n(2)
        .build()
        .unwrap();

    let response = app.openai().images().create_edit(request).await.unwrap();

    assert!(
        matches!(&*response.data[0], Image::Url { url, .. } if url == "https://images.example/target-m.png")
    );
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(upload.uri, "/drain/v1/images/edits");
    let names: Vec<&str> = upload.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["image", "prompt", "mask", "model", "n"],
        "async-openai's order, kept"
    );
    assert_eq!(upload.part("image").sha256, sha256_hex(&image));
    assert_eq!(upload.part("mask").sha256, sha256_hex(&mask));
    assert_eq!(upload.part("model").text.as_deref(), Some("target-m"));
}

#[tokio::test]
async fn image_variation_through_async_openai() {
    let app = spawn_upload_app().await;
    let image = noise(80_000, 5);
    let request = CreateImageVariationRequestArgs::default()
        .image(ImageInput::from_vec_u8("cat.png".into(), image.clone()))
        .model(ImageModel::Other("m".into()))
        .build()
        .unwrap();

    let response = app
        .openai()
        .images()
        .create_variation(request)
        .await
        .unwrap();

    assert_eq!(response.data.len(), 1);
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(upload.uri, "/drain/v1/images/variations");
    assert_eq!(upload.part("image").sha256, sha256_hex(&image));
    assert_eq!(upload.part("model").text.as_deref(), Some("target-m"));
}

#[tokio::test]
async fn every_part_keeps_its_order_name_filename_and_content_type_with_repeated_fields() {
    let app = spawn_upload_app().await;
    let (first, second, mask) = (noise(70_000, 6), noise(90_000, 7), noise(3_000, 8));
    let form = Form::new()
        .part("image[]", file("a.png", &first, "image/png"))
        .text("prompt", "two cats")
        .part("image[]", file("b b.webp", &second, "image/webp"))
        .part("mask", file("mask.png", &mask, "image/png"))
        .text("model", "m")
        .text("include[]", "logprobs")
        .text("include[]", "other")
        .text("x-unknown", "kept")
        .text("model", "m");

    let response = app.post_multipart("/v1/images/edits", form).await;

    assert_eq!(response.status(), 200);
    // Issue 12: uploads answer with the attempt headers like every forwarded request.
    assert_eq!(response.headers()["x-llmux-attempts"], "1");
    // Issue 20: the upstream identity only when `--upstream-header name` asks for it.
    assert!(!response.headers().contains_key("x-llmux-upstream"));
    let upload = app.upstream.uploads().pop().unwrap();
    assert!(upload
        .content_type
        .starts_with("multipart/form-data; boundary=llmux-"));
    assert_eq!(
        upload.parts,
        [
            file_part("image[]", "a.png", "image/png", &first),
            text_part("prompt", "two cats"),
            file_part("image[]", "b b.webp", "image/webp", &second),
            file_part("mask", "mask.png", "image/png", &mask),
            text_part("model", "target-m"),
            text_part("include[]", "logprobs"),
            text_part("include[]", "other"),
            text_part("x-unknown", "kept"),
            text_part("model", "target-m"),
        ]
    );
}

#[tokio::test]
async fn a_file_larger_than_the_memory_spool_before_the_model_goes_through_a_temp_file() {
    let app = spawn_upload_app().await;
    let audio = noise(3 * 1024 * 1024 + 17, 9);
    let form = Form::new()
        .part("file", file("long.flac", &audio, "audio/flac"))
        .text("timestamp_granularities[]", "word")
        .text("timestamp_granularities[]", "segment")
        .text("model", "m")
        .text("response_format", "verbose_json");

    let response = app.post_multipart("/v1/audio/transcriptions", form).await;

    assert_eq!(response.status(), 200);
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(
        upload.parts,
        [
            file_part("file", "long.flac", "audio/flac", &audio),
            text_part("timestamp_granularities[]", "word"),
            text_part("timestamp_granularities[]", "segment"),
            text_part("model", "target-m"),
            text_part("response_format", "verbose_json"),
        ]
    );
}

#[tokio::test]
async fn an_upload_over_the_limit_is_a_413() {
    let app = Spawn::new()
        .file("uploads.json", upload_provider(json!({})))
        .args(|args| args.max_upload_bytes = 10_000)
        .start()
        .await;
    let announced = Form::new()
        .text("model", "m")
        .part("file", file("a.wav", &noise(20_000, 10), "audio/wav"));
    let error = assert_openai_error(
        app.post_multipart("/v1/audio/transcriptions", announced)
            .await,
        413,
    )
    .await;
    assert_eq!(error["code"], "payload_too_large");

    // Without a Content-Length the limit is found while streaming, after the route is known.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..20)
        .map(|i| Ok(Bytes::from(noise(1_000, 11 + i))))
        .collect();
    let streamed = Form::new().text("model", "m").part(
        "file",
        Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .file_name("b.wav"),
    );
    let error = assert_openai_error(
        app.post_multipart("/v1/audio/transcriptions", streamed)
            .await,
        413,
    )
    .await;
    assert_eq!(error["code"], "payload_too_large");
}

#[tokio::test]
async fn bodies_without_model_boundary_or_end_are_400s() {
    let app = spawn_upload_app().await;
    let no_model = Form::new().part("file", file("a.wav", b"RIFF", "audio/wav"));
    let error = assert_openai_error(
        app.post_multipart("/v1/audio/transcriptions", no_model)
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "model");

    let raw = |content_type: &'static str, body: &'static str| {
        app.http
            .post(app.url("/v1/audio/transcriptions"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let no_boundary = raw("multipart/form-data", "--x\r\n").await.unwrap();
    assert_openai_error(no_boundary, 400).await;
    let json = raw("application/json", r#"{"model":"m"}"#).await.unwrap();
    assert_openai_error(json, 400).await;
    let malformed = raw("multipart/form-data; boundary=x", "this is not multipart")
        .await
        .unwrap();
    assert_openai_error(malformed, 400).await;
    let truncated_before_model = raw(
        "multipart/form-data; boundary=x",
        "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....",
    )
    .await
    .unwrap();
    assert_openai_error(truncated_before_model, 400).await;
    let truncated_after_model = raw(
        "multipart/form-data; boundary=x",
        "--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....",
    )
    .await
    .unwrap();
    assert_openai_error(truncated_after_model, 400).await;
}

#[tokio::test]
async fn an_unknown_model_in_an_upload_is_a_404_naming_it() {
    let app = spawn_upload_app().await;
    let form = Form::new()
        .text("model", "nope")
        .part("file", file("a.wav", b"RIFF", "audio/wav"));
    let error = assert_openai_error(
        app.post_multipart("/v1/audio/translations", form).await,
        404,
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("`nope`"));
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Regression for issue #3: uploads stream; llmux never holds a whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_streams_through_with_bounded_memory() {
    upload_200_mb(true).await;
}

/// The file before `model` is spooled to a temp file (page cache, not the process's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_before_the_model_is_spooled_with_bounded_memory() {
    upload_200_mb(false).await;
}

async fn upload_200_mb(model_first: bool) {
    const SIZE: u64 = 200 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let app = Spawn::new()
        .file("uploads.json", upload_provider(json!({})))
        .args(|args| args.max_upload_bytes = 300 * 1024 * 1024)
        .start()
        .await;
    // The tokenizer (~50 MB) is built on the first estimate, by whichever test of this process
    // needs one first: built now, it is in `before` and never lands inside the window.
    assert!(llmux::proxy::usage::load_tokenizer());
    // Warm up every worker and connection pool so only the upload's own memory is measured.
    for _ in 0..4 {
        let form = Form::new()
            .text("model", "m")
            .part("file", file("w.wav", &noise(100_000, 1), "audio/wav"));
        assert_eq!(
            app.post_multipart("/v1/audio/transcriptions", form)
                .await
                .status(),
            200
        );
    }
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !done.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Generated on the fly and hashed as it goes: the test never holds the file either.
    let hasher = std::sync::Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
    let chunks = {
        let hasher = hasher.clone();
        let block = Bytes::from(noise(CHUNK, 42));
        futures_util::stream::iter(0..SIZE / CHUNK as u64).map(move |i| {
            let mut chunk = block.to_vec();
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            hasher.lock().unwrap().update(&chunk);
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        })
    };
    use futures_util::StreamExt;
    let big =
        Part::stream_with_length(reqwest::Body::wrap_stream(chunks), SIZE).file_name("big.wav");
    let form = match model_first {
        true => Form::new().text("model", "m").part("file", big),
        false => Form::new().part("file", big).text("model", "m"),
    };
    let started = Instant::now();

    let response = app.post_multipart("/v1/audio/transcriptions", form).await;

    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(response.status(), 200);
    let upload = app.upstream.uploads().pop().unwrap();
    let file = upload.part("file");
    assert_eq!(file.len, SIZE);
    let expected = hasher.lock().unwrap().clone().finalize();
    assert_eq!(
        file.sha256,
        expected
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(upload.part("model").text.as_deref(), Some("target-m"));
    let growth_mb = (peak.load(std::sync::atomic::Ordering::SeqCst) - before) as f64 / 1024.0;
    eprintln!(
        "200 MB upload, model first: {model_first}: {:.2} s, {:.1} MB/s, RSS growth {growth_mb:.1} MB",
        elapsed.as_secs_f64(),
        SIZE as f64 / 1024.0 / 1024.0 / elapsed.as_secs_f64(),
    );
    assert!(growth_mb < 64.0, "RSS grew by {growth_mb:.1} MB");
}

#[tokio::test]
async fn the_request_timeout_starts_once_the_upload_is_sent() {
    let app = Spawn::new()
        .file(
            "uploads.json",
            upload_provider(json!({"request_timeout": 0.5})),
        )
        .start()
        .await;
    app.upstream
        .push(crate::helpers::Reply::Stall(Duration::from_secs(3)));
    let form = Form::new()
        .text("model", "m")
        .part("file", file("a.wav", &noise(1_000, 1), "audio/wav"));
    let started = Instant::now();

    let response = app.post_multipart("/v1/audio/transcriptions", form).await;

    let error = assert_openai_error(response, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn drop_params_leave_fields_out_before_and_after_the_model_and_model_field_false_keeps_it() {
    // Issue #8 on multipart: a field named by drop_params never reaches the upstream, whether it
    // came before `model` (spooled) or after it (streamed).
    let app = Spawn::new()
        .file(
            "uploads.json",
            upload_provider(json!({"drop_params": ["timestamp_granularities[]", "prompt"], "model_field": false})),
        )
        .start()
        .await;
    let audio = noise(20_000, 9);
    let form = Form::new()
        .text("prompt", "dropped before the model")
        .part("file", file("a.wav", &audio, "audio/wav"))
        .text("model", "m")
        .text("timestamp_granularities[]", "word")
        .text("language", "de");

    let response = app.post_multipart("/v1/audio/transcriptions", form).await;

    assert_eq!(response.status(), 200);
    let upload = app.upstream.uploads().pop().unwrap();
    assert_eq!(
        upload.parts,
        [
            file_part("file", "a.wav", "audio/wav", &audio),
            text_part("model", "m"),
            text_part("language", "de"),
        ]
    );
}
