//! Issue 14: the model-less OpenAI families (files, batches, vector stores, conversations,
//! threads, fine-tuning, ...) through async-openai against a stateful upstream, ids routed back
//! to the provider that created them, streamed uploads, CORS, path prefixes and passthrough.
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    BatchCompletionWindow, BatchEndpoint, BatchRequest, BatchStatus, CreateFileRequest,
    CreateFineTuningJobRequest, CreateRunRequest, CreateThreadRequest, CreateVectorStoreRequest,
    FileInput, FilePurpose, FineTuningJobStatus, RunStatus, VectorStoreSearchQuery,
    VectorStoreSearchRequest,
};
use async_openai::Client;
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::{Binary, Spawn, TestApp, PROVIDER_KEY};
use crate::stateful::StatefulUpstream;

const FAMILIES: &[&str] = &[
    "files",
    "uploads",
    "batches",
    "vector_stores",
    "conversations",
    "threads",
    "fine_tuning",
];

/// A provider serving `families` at `upstream`, with one chat model `gpt-{name}`.
fn family_provider(name: &str, upstream: &StatefulUpstream, families: &[&str]) -> Value {
    json!({
        name: {
            "api_key_variable": "TEST_PROVIDER_KEY",
            "target_base_url": upstream.url,
            "request_timeout": 30,
            "families": families,
            "models": {
                format!("gpt-{name}"): {"endpoints": [
                    {"path": "v1/chat/completions", "target_model_name": "gpt-4o-mini"}
                ]}
            }
        }
    })
}

async fn app_with(upstream: &StatefulUpstream) -> TestApp {
    Spawn::new()
        .file("openai.json", family_provider("openai", upstream, FAMILIES))
        .start()
        .await
}

fn openai(app: &TestApp) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(app.url("/v1"))
            .with_api_key("client-key-never-forwarded"),
    )
}

fn jsonl_file(name: &str) -> FileInput {
    FileInput::from_bytes(
        name.to_owned(),
        Bytes::from_static(b"{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n"),
    )
}

fn batch_of(file_id: &str) -> BatchRequest {
    BatchRequest {
        input_file_id: file_id.to_owned(),
        endpoint: BatchEndpoint::V1ChatCompletions,
        completion_window: BatchCompletionWindow::W24H,
        metadata: None,
    }
}

#[tokio::test]
async fn a_file_becomes_a_batch_that_is_polled_to_completion_and_its_output_downloaded() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;
    let client = openai(&app);

    let file = client
        .files()
        .create(CreateFileRequest {
            file: jsonl_file("requests.jsonl"),
            purpose: FilePurpose::Batch,
            expires_after: None,
        })
        .await
        .expect("file uploaded");
    let batch = client
        .batches()
        .create(batch_of(&file.id))
        .await
        .expect("batch created");
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let polled = client.batches().retrieve(&batch.id).await.unwrap();
        if polled.status == BatchStatus::Completed || Instant::now() > deadline {
            break polled;
        }
    };
    let output = client
        .files()
        .content(done.output_file_id.as_deref().expect("an output file"))
        .await
        .expect("output downloaded");

    assert_eq!(done.status, BatchStatus::Completed);
    assert!(output.starts_with(b"{\"custom_id\":\"r1\""), "{output:?}");
    assert_eq!(client.files().retrieve(&file.id).await.unwrap().bytes, 74);
    let listed = client.files().list(&[("purpose", "batch")]).await.unwrap();
    assert_eq!(listed.data.len(), 1);
    let batches = client.batches().list(&[("limit", "10")]).await.unwrap();
    assert_eq!(batches.data[0].id, batch.id);
    let second = client.batches().create(batch_of(&file.id)).await.unwrap();
    let cancelled = client.batches().cancel(&second.id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert!(client.files().delete(&file.id).await.unwrap().deleted);
    assert!(!upstream.holds(&file.id));
    // Key hygiene as for the model endpoints: the provider's key, never the client's.
    for seen in upstream.seen() {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str()),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn a_vector_store_made_from_files_is_searched_retrieved_and_deleted() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;
    let client = openai(&app);
    let file = client
        .files()
        .create(CreateFileRequest {
            file: jsonl_file("notes.jsonl"),
            purpose: FilePurpose::Assistants,
            expires_after: None,
        })
        .await
        .unwrap();

    let store = client
        .vector_stores()
        .create(CreateVectorStoreRequest {
            file_ids: Some(vec![file.id.clone()]),
            name: Some("notes".into()),
            ..Default::default()
        })
        .await
        .expect("vector store created");
    let results = client
        .vector_stores()
        .search(
            &store.id,
            VectorStoreSearchRequest {
                query: VectorStoreSearchQuery::Text("llamas".into()),
                rewrite_query: None,
                max_num_results: None,
                filters: None,
                ranking_options: None,
            },
        )
        .await
        .expect("searched");

    assert_eq!(store.file_counts.total, 1);
    assert_eq!(results.data[0].file_id, file.id);
    assert_eq!(results.data[0].content[0].text, "about llamas");
    let retrieved = client.vector_stores().retrieve(&store.id).await.unwrap();
    assert_eq!(retrieved.name.as_deref(), Some("notes"));
    assert!(
        client
            .vector_stores()
            .delete(&store.id)
            .await
            .unwrap()
            .deleted
    );
}

#[tokio::test]
async fn a_conversation_gets_items_listed_back() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;

    let conversation: Value = app
        .post_json("/v1/conversations", json!({"metadata": {"topic": "demo"}}))
        .await
        .json()
        .await
        .unwrap();
    let id = conversation["id"].as_str().unwrap();
    let added = app
        .post_json(
            &format!("/v1/conversations/{id}/items"),
            json!({"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}),
        )
        .await;
    assert_eq!(added.status(), 200);
    let items: Value = app
        .get(&format!("/v1/conversations/{id}/items"))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(items["data"].as_array().unwrap().len(), 1);
    assert_eq!(items["data"][0]["role"], "user");
    let fetched: Value = app
        .get(&format!("/v1/conversations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["metadata"]["topic"], "demo");
    let deleted = app
        .http
        .delete(app.url(&format!("/v1/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        app.get(&format!("/v1/conversations/{id}")).await.status(),
        404
    );
}

#[tokio::test]
async fn a_thread_with_a_run_passes_the_beta_header() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;
    let client = openai(&app);

    let thread = client
        .threads()
        .create(CreateThreadRequest::default())
        .await
        .expect("thread created");
    let run = client
        .threads()
        .runs(&thread.id)
        .create(CreateRunRequest {
            assistant_id: "asst_1".into(),
            ..Default::default()
        })
        .await
        .expect("run created");
    let polled = client
        .threads()
        .runs(&thread.id)
        .retrieve(&run.id)
        .await
        .unwrap();

    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(polled.status, RunStatus::Completed);
    let runs: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.uri.contains("/runs"))
        .collect();
    assert_eq!(runs.len(), 2);
    for seen in runs {
        assert_eq!(
            seen.header("openai-beta"),
            Some("assistants=v2"),
            "{seen:?}"
        );
    }
    assert!(client.threads().delete(&thread.id).await.unwrap().deleted);
}

#[tokio::test]
async fn a_fine_tuning_job_trains_on_an_uploaded_file() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;
    let client = openai(&app);
    let file = client
        .files()
        .create(CreateFileRequest {
            file: jsonl_file("train.jsonl"),
            purpose: FilePurpose::FineTune,
            expires_after: None,
        })
        .await
        .unwrap();

    let job = client
        .fine_tuning()
        .create(CreateFineTuningJobRequest {
            model: "gpt-4o-mini".into(),
            training_file: file.id.clone(),
            ..Default::default()
        })
        .await
        .expect("job created");

    assert_eq!(job.status, FineTuningJobStatus::Queued);
    assert_eq!(job.training_file, file.id);
    let retrieved = client.fine_tuning().retrieve(&job.id).await.unwrap();
    assert_eq!(retrieved.id, job.id);
}

/// Two providers serve the same families: creations are spread over them, every later call
/// naming an id (in the path or, for a creation, in the body) goes where that id lives.
#[tokio::test]
async fn ids_route_back_to_the_provider_that_created_them() {
    let (a, b) = (
        StatefulUpstream::start("a").await,
        StatefulUpstream::start("b").await,
    );
    let app = Spawn::new()
        .file("a.json", family_provider("a", &a, &["files", "batches"]))
        .file("b.json", family_provider("b", &b, &["files", "batches"]))
        .start()
        .await;
    let client = openai(&app);

    let mut files = Vec::new();
    for name in ["one.jsonl", "two.jsonl"] {
        let file = client
            .files()
            .create(CreateFileRequest {
                file: jsonl_file(name),
                purpose: FilePurpose::Batch,
                expires_after: None,
            })
            .await
            .unwrap();
        files.push(file.id);
    }

    assert!(
        a.holds(&files[0]) != a.holds(&files[1]),
        "one file on each provider: {files:?}"
    );
    for id in &files {
        let holder = if a.holds(id) { &a } else { &b };
        // The stateful upstream refuses a batch of a file it does not hold.
        let batch = client
            .batches()
            .create(batch_of(id))
            .await
            .expect("batch created where its file lives");
        assert!(holder.holds(&batch.id));
        let retrieved = client.batches().retrieve(&batch.id).await.unwrap();
        assert_eq!(retrieved.input_file_id, *id);
        assert_eq!(client.files().retrieve(id).await.unwrap().id, *id);
        assert!(client.files().delete(id).await.unwrap().deleted);
    }
    // Lists are one provider's (the first configured): their cursors are that provider's ids.
    let list_calls = |upstream: &StatefulUpstream| {
        upstream
            .seen()
            .iter()
            .filter(|s| s.method == "GET" && s.uri.starts_with("/v1/files?"))
            .count()
    };
    client.files().list(&[("limit", "5")]).await.unwrap();
    assert_eq!((list_calls(&a), list_calls(&b)), (1, 0));
}

#[tokio::test]
async fn a_family_no_provider_serves_is_a_404_naming_the_family_and_the_key() {
    let upstream = StatefulUpstream::start("a").await;
    let app = Spawn::new()
        .file(
            "openai.json",
            family_provider("openai", &upstream, &["files"]),
        )
        .start()
        .await;

    let response = app.get("/v1/batches/batch_1").await;

    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "family_not_served");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("batches family"), "{message}");
    assert!(message.contains(r#""families": ["batches"]"#), "{message}");
    // Reserved table names are not models.
    let models: Value = app.get("/v1/models").await.json().await.unwrap();
    assert!(!models.to_string().contains("@files"), "{models}");
    let chat = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "@files", "messages": []}),
        )
        .await;
    assert_eq!(chat.status(), 404);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Regression for issue 14: `/v1/files` streams; llmux never holds a whole file. The server
/// runs as its own process so its memory is measured alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_file_upload_streams_through_the_server_with_bounded_memory() {
    const SIZE: u64 = 300 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let upstream = StatefulUpstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("openai.json"),
        family_provider("openai", &upstream, FAMILIES).to_string(),
    )
    .unwrap();
    let server = Binary::start(dir.path(), &[], &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await;
    let pid = server.child.id().unwrap();
    let http = reqwest::Client::new();
    // Warm up the worker and its connection pool so only the upload's own memory is measured.
    for _ in 0..4 {
        let form = Form::new().text("purpose", "batch").part(
            "file",
            Part::bytes(vec![7u8; 1_000_000]).file_name("w.jsonl"),
        );
        let warm = http
            .post(server.url("/v1/files"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(warm.status(), 200);
    }
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !done.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Generated on the fly and hashed as it goes: the test never holds the file either.
    use sha2::Digest;
    let hasher = std::sync::Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
    let chunks = {
        let hasher = hasher.clone();
        futures_util::stream::iter(0..SIZE / CHUNK as u64).map(move |i| {
            let mut chunk = vec![(i % 251) as u8; CHUNK];
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            hasher.lock().unwrap().update(&chunk);
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        })
    };
    use futures_util::StreamExt;
    let big =
        Part::stream_with_length(reqwest::Body::wrap_stream(chunks), SIZE).file_name("big.jsonl");
    let form = Form::new().text("purpose", "batch").part("file", big);
    let started = Instant::now();

    let response = http
        .post(server.url("/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();

    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.unwrap();
    let stored = upstream.file(created["id"].as_str().unwrap()).unwrap();
    assert_eq!(stored.len, SIZE);
    let expected: String = hasher
        .lock()
        .unwrap()
        .clone()
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored.sha256, expected);
    let peak_kib = peak.load(std::sync::atomic::Ordering::SeqCst);
    let growth_mb = (peak_kib - before) as f64 / 1024.0;
    eprintln!(
        "300 MB /v1/files upload: {:.2} s, {:.1} MB/s, server RSS {:.1} MB before, {:.1} MB peak, growth {growth_mb:.1} MB",
        elapsed.as_secs_f64(),
        SIZE as f64 / 1024.0 / 1024.0 / elapsed.as_secs_f64(),
        before as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
    );
    assert!(
        // Bounded: a copy of the file would be 300 MB; socket and allocator buffers at full
        // loopback speed (about 150 MB/s) take a few tens.
        growth_mb < 64.0,
        "the server's RSS grew by {growth_mb:.1} MB"
    );
}

#[tokio::test]
async fn a_file_over_the_announced_limit_is_a_413_before_anything_goes_upstream() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;

    let response = app
        .http
        .post(app.url("/v1/uploads/upload_1/parts"))
        .header("content-type", "multipart/form-data; boundary=x")
        .header("content-length", (64 * 1024 * 1024 + 1).to_string())
        .body(vec![0u8; 16])
        .send()
        .await;

    // llmux may answer before reading the body and close the connection.
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn cors_preflights_from_a_browser_origin_are_answered_when_enabled() {
    let upstream = StatefulUpstream::start("a").await;
    let app = Spawn::new()
        .file(
            "openai.json",
            family_provider("openai", &upstream, FAMILIES),
        )
        .args(|args| args.cors_origins = vec!["http://localhost:3000".into()])
        .start()
        .await;

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/files"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,openai-beta,x-stainless-os,content-type",
        )
        .send()
        .await
        .unwrap();

    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |name: &str| {
        preflight
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "http://localhost:3000"
    );
    for asked in ["authorization", "openai-beta", "x-stainless-os"] {
        assert!(
            header("access-control-allow-headers").contains(asked),
            "{asked} in {:?}",
            header("access-control-allow-headers")
        );
    }
    assert!(upstream.seen().is_empty(), "preflights stay in llmux");
    let answer = app
        .http
        .get(app.url("/v1/models"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let stranger = app
        .http
        .get(app.url("/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(stranger
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let upstream = StatefulUpstream::start("a").await;
    let app = app_with(&upstream).await;

    let answer = app
        .http
        .get(app.url("/v1/models"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();

    assert!(answer
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn the_api_is_served_under_each_path_prefix_too() {
    let upstream = StatefulUpstream::start("a").await;
    let app = Spawn::new()
        .file(
            "openai.json",
            family_provider("openai", &upstream, FAMILIES),
        )
        .args(|args| args.path_prefix = vec!["/inference".into(), "/api".into()])
        .start()
        .await;

    let prefixed = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(app.url("/inference/v1"))
            .with_api_key("k"),
    );
    let file = prefixed
        .files()
        .create(CreateFileRequest {
            file: jsonl_file("p.jsonl"),
            purpose: FilePurpose::Batch,
            expires_after: None,
        })
        .await
        .expect("file uploaded under /inference");

    let models = app.get("/api/v1/models").await;
    assert_eq!(models.status(), 200);
    let retrieved = app.get(&format!("/api/v1/files/{}", file.id)).await;
    assert_eq!(retrieved.status(), 200);
    assert_eq!(
        upstream.seen().last().unwrap().uri,
        format!("/v1/files/{}", file.id)
    );
    assert_eq!(app.get("/v1/models").await.status(), 200);
    assert_eq!(app.get("/apix/v1/models").await.status(), 404);
}

#[tokio::test]
async fn passthrough_forwards_unknown_v1_paths_only_when_a_provider_opts_in() {
    let upstream = StatefulUpstream::start("a").await;
    let off = app_with(&upstream).await;
    let mut provider = family_provider("openai", &upstream, &[]);
    provider["openai"]["passthrough"] = json!(true);
    let on = Spawn::new().file("openai.json", provider).start().await;

    let refused = off.get("/v1/organization/costs?limit=1").await;
    let forwarded = on
        .http
        .put(on.url("/v1/some/new/thing?x=1"))
        .header("authorization", "Bearer client-key")
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(refused.status(), 404);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_url");
    // The stateful upstream has no such route: its own 404 comes back, as an answer.
    assert_eq!(forwarded.status(), 404);
    assert!(forwarded.headers().contains_key("x-llmux-attempts"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].uri, "/v1/some/new/thing?x=1");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    // Outside /v1 nothing is passed through.
    assert_eq!(on.get("/other/path").await.status(), 404);
    assert_eq!(upstream.seen().len(), 1);
}

#[test]
fn llmux_check_lists_the_families_each_provider_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("openai.json"),
        json!({"openai": {"target_base_url": "http://127.0.0.1:9", "families": ["files", "vector_stores"]}})
            .to_string(),
    )
    .unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_llmux"))
        .args(["check", "--config-dir"])
        .arg(dir.path())
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for (model, path) in [
        ("@files", "/v1/files"),
        ("@vector_stores", "/v1/vector_stores"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(model) && l.contains(path)),
            "{model} in {stdout}"
        );
    }
}

#[tokio::test]
async fn stored_chat_completions_share_their_url_with_chat_completions() {
    let mut provider = crate::helpers::provider_file("mock", "", &[("m", "target-m")]);
    provider["mock"]["families"] = json!(["chat_completions"]);
    let app = Spawn::new().file("provider.json", provider).start().await;

    let created = app
        .post_json(
            "/v1/chat/completions",
            json!({"model": "m", "store": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let listed = app.get("/v1/chat/completions?limit=2").await;
    let messages = app.get("/v1/chat/completions/chatcmpl-1/messages").await;

    assert!(listed.headers().contains_key("x-llmux-attempts"));
    assert!(messages.headers().contains_key("x-llmux-attempts"));
    let requests = app.upstream.requests();
    let seen: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.uri.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/chat/completions?limit=2"),
            ("GET", "/v1/chat/completions/chatcmpl-1/messages"),
        ]
    );
}

#[tokio::test]
async fn a_chunked_upload_past_its_limit_is_cut_off_with_a_413() {
    let upstream = StatefulUpstream::start("a").await;
    let app = Spawn::new()
        .file(
            "openai.json",
            family_provider("openai", &upstream, &["videos"]),
        )
        .args(|args| args.max_upload_bytes = 1024 * 1024)
        .start()
        .await;
    // No Content-Length: the limit can only be found while streaming.
    let chunks = futures_util::stream::iter(0..32)
        .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024])));
    use futures_util::StreamExt;

    let response = app
        .http
        .post(app.url("/v1/videos"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn ids_and_passthrough_paths_cannot_climb_out_of_v1() {
    let upstream = StatefulUpstream::start("a").await;
    let mut provider = family_provider("openai", &upstream, FAMILIES);
    provider["openai"]["passthrough"] = json!(true);
    let app = Spawn::new().file("openai.json", provider).start().await;

    // Sent raw: HTTP clients resolve dot segments (encoded ones too) before sending.
    let encoded_id = raw_status(app.port, "/v1/files/%2e%2e/content").await;
    let dotted_id = raw_status(app.port, "/v1/files/../content").await;
    let dotted_passthrough = raw_status(app.port, "/v1/x/%2E%2E/%2e%2e/admin").await;

    assert_eq!(encoded_id, 400);
    assert_eq!(dotted_id, 400);
    assert_eq!(dotted_passthrough, 404);
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

/// The status of `GET {path}` sent as written, byte for byte.
async fn raw_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("llmux answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
