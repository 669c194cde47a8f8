//! A fast mock OpenAI upstream for the benchmark harness (bench/run.sh), not for tests.
//!
//! POST /v1/chat/completions   JSON (~500 bytes, echoes the model), or SSE when the body has
//!                             "stream": true: `x-mock-chunks` events (default 20) every
//!                             `x-mock-gap-ms` (default 20) milliseconds.
//! POST /v1/audio/transcriptions  drains any size of upload, answers its byte count.
//! POST /v1/responses          a Responses API answer (~600 bytes) with a new id each time.
//! GET  /health
//!
//! Usage: mock_upstream [PORT] [WORKERS]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;

fn header_number(request: &HttpRequest, name: &str, default: u64) -> u64 {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.model)
        .unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn chat(request: HttpRequest, body: Bytes) -> HttpResponse {
    let model = model_of(&body);
    let streaming = contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true");
    if !streaming {
        let answer = format!(
            r#"{{"id":"chatcmpl-bench0000000000000000000000","object":"chat.completion","created":1700000000,"model":"{model}","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"This is a benchmark answer of a realistic size, long enough to look like a short reply from a model.","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":25,"completion_tokens":21,"total_tokens":46,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#
        );
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(answer);
    }
    // Like OpenAI and vLLM: a usage event before [DONE] when the request asks for it.
    let usage = contains(&body, b"\"include_usage\":true");
    let chunks = header_number(&request, "x-mock-chunks", 20);
    let gap = Duration::from_millis(header_number(&request, "x-mock-gap-ms", 20));
    let events = futures_util::stream::unfold(0u64, move |sent| {
        let model = model.clone();
        async move {
            if sent > chunks + u64::from(usage) {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(gap).await;
            }
            let frame = if sent == chunks + u64::from(usage) {
                Bytes::from_static(b"data: [DONE]\n\n")
            } else if sent == chunks {
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
                    chunks + 9
                ))
            } else {
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{sent} \"}},\"finish_reason\":null}}]}}\n\n"
                ))
            };
            Some((Ok::<_, std::io::Error>(frame), sent + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(events)
}

async fn transcription(mut payload: web::Payload) -> HttpResponse {
    let mut bytes = 0usize;
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => bytes += chunk.len(),
            Err(error) => return HttpResponse::BadRequest().body(error.to_string()),
        }
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!(r#"{{"text":"received {bytes} bytes"}}"#))
}

static RESPONSES: AtomicU64 = AtomicU64::new(0);

async fn responses(body: Bytes) -> HttpResponse {
    let model = model_of(&body);
    let n = RESPONSES.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok().content_type("application/json").body(format!(
        r#"{{"id":"resp_bench{n:024}","object":"response","created_at":1700000000,"status":"completed","model":"{model}","output":[{{"type":"message","id":"msg_bench{n:024}","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"This is a benchmark answer of a realistic size, long enough to look like a short reply.","annotations":[]}}]}}],"usage":{{"input_tokens":25,"output_tokens":21,"total_tokens":46}}}}"#
    ))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().body(r#"{"status":"ok"}"#)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9100);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/audio/transcriptions", web::post().to(transcription))
            .route("/v1/responses", web::post().to(responses))
            .route("/health", web::get().to(health))
    })
    .workers(workers)
    .backlog(4096)
    .max_connections(100_000)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
