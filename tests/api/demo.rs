//! The built-in demo backend (`"target_base_url": "builtin:demo"`), through llmux, with
//! async-openai: every answer must deserialize into its OpenAI type.
use std::time::{Duration, Instant};

use async_openai::types::responses::{
    CreateResponseArgs, Input, OutputContent, Response, ResponseEvent,
};
use async_openai::types::{
    AudioInput, ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, CreateCompletionRequestArgs, CreateEmbeddingRequestArgs,
    CreateImageRequestArgs, CreateModerationRequestArgs, CreateSpeechRequestArgs,
    CreateTranscriptionRequestArgs, CreateTranslationRequestArgs, Image, ImageResponseFormat,
    ModerationInput, Voice,
};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, Spawn, TestApp};

/// llmux with one demo provider; `demo` settings go on the provider.
async fn demo_app(demo: Value) -> TestApp {
    let paths = [
        "v1/chat/completions",
        "v1/completions",
        "v1/embeddings",
        "v1/moderations",
        "v1/responses",
        "v1/images/generations",
        "v1/audio/speech",
        "v1/audio/transcriptions",
        "v1/audio/translations",
    ];
    let endpoints: Vec<Value> = paths
        .iter()
        .map(|path| json!({"path": path, "target_model_name": "demo-model"}))
        .collect();
    Spawn::new()
        .file(
            "demo.json",
            json!({"demo": {"target_base_url": "builtin:demo", "demo": demo, "max_retries": 0,
                "models": {"demo": {"endpoints": endpoints}}}}),
        )
        .start()
        .await
}

fn chat_request(stream: bool) -> async_openai::types::CreateChatCompletionRequest {
    let mut request = CreateChatCompletionRequestArgs::default();
    request
        .model("demo")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hello there!")
            .build()
            .unwrap()
            .into()]);
    if stream {
        request
            .stream(true)
            .stream_options(ChatCompletionStreamOptions {
                include_usage: true,
            });
    }
    request.build().unwrap()
}

#[tokio::test]
async fn a_chat_completion_comes_back_in_openais_shape_with_usage() {
    let app = demo_app(json!({})).await;

    let answer = app
        .openai()
        .chat()
        .create(chat_request(false))
        .await
        .unwrap();

    assert_eq!(answer.object, "chat.completion");
    assert_eq!(answer.model, "demo-model");
    let text = answer.choices[0].message.content.as_deref().unwrap();
    assert_eq!(text, llmux::demo::text::REPLY);
    let usage = answer.usage.unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 10);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
}

#[tokio::test]
async fn a_streamed_chat_is_paced_after_the_first_token_and_ends_with_usage() {
    let app = demo_app(json!({"tokens_per_second": 100, "time_to_first_token_ms": 300})).await;
    let started = Instant::now();

    let mut stream = app
        .openai()
        .chat()
        .create_stream(chat_request(true))
        .await
        .unwrap();
    let mut text = String::new();
    let mut first_token = None;
    let mut usage = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream goes on")
    {
        let chunk = chunk.unwrap();
        if let Some(choice) = chunk.choices.first() {
            let delta = choice.delta.content.as_deref().unwrap_or("");
            if !delta.is_empty() && first_token.is_none() {
                first_token = Some(started.elapsed());
            }
            text.push_str(delta);
        }
        if let Some(chunk_usage) = chunk.usage {
            usage = Some(chunk_usage);
        }
    }
    let total = started.elapsed();

    assert_eq!(text, llmux::demo::text::REPLY);
    let first_token = first_token.unwrap();
    assert!(first_token >= Duration::from_millis(300), "{first_token:?}");
    // 45 tokens at 100 a second after the first: about 0.44 s more.
    assert!(
        total >= first_token + Duration::from_millis(400),
        "{first_token:?} then {total:?}"
    );
    assert!(total < Duration::from_secs(5), "{total:?}");
    assert_eq!(usage.unwrap().completion_tokens, 45);
}

#[tokio::test]
async fn completions_answer_plain_and_streamed_and_honour_max_tokens() {
    let app = demo_app(json!({})).await;
    let request = CreateCompletionRequestArgs::default()
        .model("demo")
        .prompt("Say hello")
        .max_tokens(3u32)
        .build()
        .unwrap();

    let answer = app.openai().completions().create(request).await.unwrap();
    let mut stream_request = CreateCompletionRequestArgs::default();
    stream_request
        .model("demo")
        .prompt("Say hello")
        .stream(true);
    let mut stream = app
        .openai()
        .completions()
        .create_stream(stream_request.build().unwrap())
        .await
        .unwrap();
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        streamed.push_str(&chunk.unwrap().choices[0].text);
    }

    assert_eq!(answer.choices[0].text, "Hello! This is");
    assert_eq!(
        answer.choices[0].finish_reason,
        Some(async_openai::types::CompletionFinishReason::Length)
    );
    assert_eq!(streamed, llmux::demo::text::REPLY);
}

#[tokio::test]
async fn embeddings_are_deterministic_in_the_configured_dimension_as_floats_and_base64() {
    let app = demo_app(json!({"embedding_dimensions": 12})).await;
    let request = || {
        CreateEmbeddingRequestArgs::default()
            .model("demo")
            .input(["first text", "second text"])
            .build()
            .unwrap()
    };
    let mut base64_request = request();
    base64_request.encoding_format = Some(async_openai::types::EncodingFormat::Base64);

    let floats = app.openai().embeddings().create(request()).await.unwrap();
    let again = app.openai().embeddings().create(request()).await.unwrap();
    let base64 = app
        .openai()
        .embeddings()
        .create_base64(base64_request)
        .await
        .unwrap();

    assert_eq!(floats.data.len(), 2);
    assert_eq!(floats.data[0].embedding.len(), 12);
    assert_eq!(floats.data[0].embedding, again.data[0].embedding);
    assert_ne!(floats.data[0].embedding, floats.data[1].embedding);
    let decoded: Vec<f32> = base64.data[0].embedding.clone().into();
    assert_eq!(decoded, floats.data[0].embedding);
}

#[tokio::test]
async fn moderations_flag_nothing_for_every_input() {
    let app = demo_app(json!({})).await;
    let request = CreateModerationRequestArgs::default()
        .model("demo")
        .input(ModerationInput::StringArray(vec!["a".into(), "b".into()]))
        .build()
        .unwrap();

    let answer = app.openai().moderations().create(request).await.unwrap();

    assert_eq!(answer.results.len(), 2);
    assert!(answer.results.iter().all(|result| !result.flagged));
}

#[tokio::test]
async fn responses_answer_plain_stream_typed_events_and_are_retrieved_by_id() {
    let app = demo_app(json!({})).await;
    let request = |stream: bool| {
        CreateResponseArgs::default()
            .model("demo")
            .input(Input::Text("Hello".into()))
            .stream(stream)
            .build()
            .unwrap()
    };

    let plain = app
        .openai()
        .responses()
        .create(request(false))
        .await
        .unwrap();
    let mut stream = app
        .openai()
        .responses()
        .create_stream(request(true))
        .await
        .unwrap();
    let mut deltas = String::new();
    let mut completed = None;
    // Like OpenAI's, the stream ends after `response.completed`, without `[DONE]`.
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ResponseEvent::ResponseOutputTextDelta(delta) => deltas.push_str(&delta.delta),
            ResponseEvent::ResponseCompleted(done) => {
                completed = Some(done.response.id);
                break;
            }
            _ => {}
        }
    }
    let retrieved: Response = app
        .http
        .get(app.url(&format!("/v1/responses/{}", plain.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let OutputContent::Message(message) = &plain.output[0] else {
        panic!("{:?}", plain.output);
    };
    assert_eq!(message.content.len(), 1);
    assert_eq!(deltas, llmux::demo::text::REPLY);
    assert!(completed.unwrap().starts_with("resp_"));
    assert_eq!(retrieved.id, plain.id);
    assert_eq!(retrieved.usage, plain.usage);
}

#[tokio::test]
async fn image_generations_give_a_png_as_base64_or_as_a_url_llmux_serves() {
    let app = demo_app(json!({})).await;
    let request = |format| {
        CreateImageRequestArgs::default()
            .model(async_openai::types::ImageModel::Other("demo".into()))
            .prompt("a lighthouse")
            .response_format(format)
            .build()
            .unwrap()
    };

    let b64 = app
        .openai()
        .images()
        .create(request(ImageResponseFormat::B64Json))
        .await
        .unwrap();
    let url = app
        .openai()
        .images()
        .create(request(ImageResponseFormat::Url))
        .await
        .unwrap();

    let Image::B64Json { b64_json, .. } = &*b64.data[0] else {
        panic!("{:?}", b64.data);
    };
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64_json.as_bytes())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let Image::Url { url, .. } = &*url.data[0] else {
        panic!("{:?}", url.data);
    };
    assert!(url.starts_with(&app.address), "{url}");
    let fetched = app.http.get(url).send().await.unwrap();
    assert_eq!(fetched.headers()["content-type"], "image/png");
    assert_eq!(fetched.bytes().await.unwrap(), png);
}

#[tokio::test]
async fn speech_is_a_wav_tone_and_uploads_are_read_whole_then_transcribed() {
    let app = demo_app(json!({})).await;
    let speech = CreateSpeechRequestArgs::default()
        .model(async_openai::types::SpeechModel::Other("demo".into()))
        .input("Hello from the demo")
        .voice(Voice::Alloy)
        .build()
        .unwrap();
    let upload = vec![7u8; 3 * 1024 * 1024];
    let transcription = CreateTranscriptionRequestArgs::default()
        .model("demo")
        .file(AudioInput::from_vec_u8("talk.wav".into(), upload.clone()))
        .build()
        .unwrap();
    let translation = CreateTranslationRequestArgs::default()
        .model("demo")
        .file(AudioInput::from_vec_u8("talk.wav".into(), upload))
        .build()
        .unwrap();

    let audio = app.openai().audio().speech(speech).await.unwrap();
    let transcript = app
        .openai()
        .audio()
        .transcribe(transcription)
        .await
        .unwrap();
    let translated = app.openai().audio().translate(translation).await.unwrap();

    assert_eq!(&audio.bytes[..4], b"RIFF");
    assert_eq!(&audio.bytes[8..12], b"WAVE");
    assert_eq!(transcript.text, llmux::demo::media::TRANSCRIPT);
    assert_eq!(translated.text, llmux::demo::media::TRANSCRIPT);
}

#[tokio::test]
async fn injected_errors_and_rate_limits_reach_the_client_in_openais_shape() {
    let failing = demo_app(json!({"error_rate": 1.0})).await;
    let limited = demo_app(json!({"rate_limit_rate": 1.0, "retry_after": 0})).await;
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});

    let error = failing.post_json("/v1/chat/completions", &body).await;
    let limit = limited.post_json("/v1/chat/completions", &body).await;

    assert_eq!(limit.headers()["retry-after"], "0");
    let error = assert_openai_error(error, 500).await;
    assert_eq!(error["code"], "demo_injected_error");
    let limit = assert_openai_error(limit, 429).await;
    assert_eq!(limit["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_rate_limited_demo_is_retried_by_llmux_until_it_answers() {
    // Half the attempts are refused: with 20 retries a request fails once in two million, and
    // 16 requests all answered at the first attempt happen once in 65536 runs.
    let app = Spawn::new()
        .file(
            "demo.json",
            json!({"demo": {"target_base_url": "builtin:demo", "max_retries": 20,
                "demo": {"rate_limit_rate": 0.5, "retry_after": 0},
                "models": {"demo": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "d"}]}}}}),
        )
        .start()
        .await;

    let mut statuses = Vec::new();
    for _ in 0..16 {
        let response = app
            .post_json(
                "/v1/chat/completions",
                json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        statuses.push(response.status().as_u16());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let attempts: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("llmux_upstream_attempts_total{outcome=\"response\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(attempts > 16, "{attempts} attempts");
}

#[tokio::test]
async fn the_demo_is_healthy_and_its_latency_delays_every_answer() {
    let app = demo_app(json!({"latency_ms": 200})).await;

    let health: Value = app
        .http
        .get(app.url("/health/demo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = Instant::now();
    let response = app
        .post_json("/v1/embeddings", json!({"model": "demo", "input": "hello"}))
        .await;

    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn unusable_demo_settings_are_config_errors_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.json");
    std::fs::write(
        &file,
        "{\"demo\": {\"target_base_url\": \"builtin:demo\",\n \"models\": {\"m\": {\"endpoints\": [\n {\"path\": \"v1/chat/completions\", \"target_model_name\": \"t\",\n  \"demo\": {\"error_rate\": 2}}]}}}}",
    )
    .unwrap();

    let loaded = llmux::config::load::load_file(&file, &|_| None);

    let error = loaded.errors().next().expect("an error");
    assert_eq!(
        error.json_path,
        "demo.models.m.endpoints[0].demo.error_rate"
    );
    assert_eq!(error.position.unwrap().line, 4);
    assert!(error.message.contains("from 0 to 1"), "{}", error.message);
}

#[tokio::test]
async fn the_shipped_configs_answer_the_first_request_with_nothing_else_running() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut spawn = Spawn::new();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            spawn = spawn.file(&name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let app = spawn.start().await;
    let mut request = chat_request(true);
    request.model = "demo/chat".into();

    let mut stream = app.openai().chat().create_stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream goes on")
    {
        if let Some(choice) = chunk.unwrap().choices.first() {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }

    assert_eq!(text, llmux::demo::text::REPLY);
}

#[test]
fn llmux_check_accepts_builtin_demo() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["check", "--config-dir"])
        .arg(&shipped)
        .output()
        .unwrap();

    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("demo/chat"), "{stdout}");
    assert!(stdout.contains(" 0 errors"), "{stdout}");
}
