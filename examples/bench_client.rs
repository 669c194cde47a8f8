//! Load generator for the scenarios wrk cannot measure (bench/run.sh), not for tests.
//!
//! bench_client rate    URL RPS SECONDS [BODY]       fixed-rate POSTs (default: a chat request):
//!                                                   latency p50/p99
//! bench_client streams URL N CHUNKS GAP_MS          N concurrent SSE streams: time to first chunk,
//!                                                   and whether events arrive spread out or bunched
//! bench_client upload  URL MEGABYTES                one streamed multipart upload: MB/s
//! bench_client count   URL N CONNECTIONS [BYTES]    exactly N chat requests over CONNECTIONS
//!                                                   keep-alive connections (BYTES: pad the
//!                                                   body to about that size): count, errors
//!
//! `BENCH_AUTHORIZATION`, when set, is sent as every request's `Authorization` header (a client
//! key, for llmux with access control).
//! Prints one JSON object on stdout.
#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a command-line benchmark tool: prints its result, panics on a broken setup"
)]
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

const CHAT: &str = r#"{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}"#;
const STREAM_CHAT: &str =
    r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"Hello!"}]}"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `BENCH_API_KEY` set: every request carries it as `Authorization: Bearer` (access control on).
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("BENCH_API_KEY") {
        let value = format!("Bearer {key}").parse().expect("a header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .expect("client")
}

async fn rate(url: String, rps: u64, seconds: u64, body: String) {
    let client = client();
    let total = rps * seconds;
    let interval = Duration::from_secs_f64(1.0 / rps as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .ok()?;
            let ok = response.status().is_success();
            response.bytes().await.ok()?;
            ok.then(|| sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Some(ms))) => latencies.push(ms),
            _ => errors += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"count": latencies.len(), "errors": errors,
            "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0)})
    );
}

async fn streams(url: String, count: usize, chunks: u64, gap_ms: u64) {
    let client = client();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let client = client.clone();
        let url = url.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let sent = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-mock-chunks", chunks.to_string())
                .header("x-mock-gap-ms", gap_ms.to_string())
                .body(STREAM_CHAT)
                .send()
                .await
                .ok()?;
            if !response.status().is_success() {
                return None;
            }
            let mut body = response.bytes_stream();
            let mut arrivals: Vec<Duration> = Vec::new();
            let mut pending = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.ok()?;
                let now = sent.elapsed();
                pending.extend_from_slice(&chunk);
                // Count complete events in what arrived.
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    arrivals.push(now);
                    pending.drain(..end + 2);
                }
            }
            Some(arrivals)
        }));
    }
    let mut first = Vec::new();
    let (mut bunched, mut failed, mut complete, mut gaps, mut tight_gaps) = (0, 0, 0, 0u64, 0u64);
    let expected = chunks as usize + 1;
    let gap = Duration::from_millis(gap_ms);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(120), task).await {
            Ok(Ok(Some(arrivals))) if arrivals.len() == expected => {
                complete += 1;
                first.push(arrivals[0].as_secs_f64() * 1000.0);
                let span = arrivals[arrivals.len() - 1] - arrivals[0];
                // A stream buffered and released at once spans far less than its events' spacing.
                if span < gap.mul_f64((expected - 1) as f64 * 0.5) {
                    bunched += 1;
                }
                for pair in arrivals.windows(2) {
                    gaps += 1;
                    if pair[1] - pair[0] < gap / 4 {
                        tight_gaps += 1;
                    }
                }
            }
            _ => failed += 1,
        }
    }
    first.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"streams": count, "complete": complete, "failed": failed, "bunched_streams": bunched,
            "tight_gap_fraction": if gaps == 0 { 0.0 } else { tight_gaps as f64 / gaps as f64 },
            "ttfc_p50_ms": percentile(&first, 50.0), "ttfc_p99_ms": percentile(&first, 99.0)})
    );
}

async fn upload(url: String, megabytes: u64) {
    let boundary = "llmux-bench-boundary-7d1f0c";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nbench\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let chunk = Bytes::from(vec![0x5au8; 256 * 1024]);
    let chunk_count = megabytes * 4;
    let total = head.len() as u64 + chunk_count * chunk.len() as u64 + tail.len() as u64;
    let parts = futures_util::stream::iter(
        std::iter::once(Bytes::from(head))
            .chain((0..chunk_count).map(move |_| chunk.clone()))
            .chain(std::iter::once(Bytes::from(tail))),
    )
    .map(Ok::<_, std::io::Error>);
    let started = Instant::now();
    let response = client()
        .post(&url)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(parts))
        .send()
        .await
        .expect("upload reaches the server");
    let status = response.status().as_u16();
    let answer = response.text().await.unwrap_or_default();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"status": status, "seconds": seconds, "mb_per_s": megabytes as f64 / seconds, "answer": answer})
    );
}

/// A chat body of about `bytes` bytes (at least the small one): one long user message.
fn chat_body(bytes: usize) -> String {
    let padding = bytes.saturating_sub(CHAT.len());
    if padding == 0 {
        return CHAT.to_owned();
    }
    let text = "lorem ipsum dolor sit amet ".repeat(padding / 27 + 1);
    json!({"model": "bench", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": &text[..padding]}]})
    .to_string()
}

async fn count(url: String, total: u64, connections: u64, bytes: usize) {
    let body = Bytes::from(chat_body(bytes));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let authorization = std::env::var("BENCH_AUTHORIZATION").ok();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        // One client per task: each keeps its own keep-alive connection.
        let client = client();
        let (url, body, next) = (url.clone(), body.clone(), next.clone());
        let authorization = authorization.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let mut request = client.post(&url).header("content-type", "application/json");
                if let Some(authorization) = &authorization {
                    request = request.header("authorization", authorization);
                }
                let sent = request.body(body.clone()).send().await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        match response.bytes().await {
                            Ok(_) => ok += 1,
                            Err(_) => errors += 1,
                        }
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    let started = Instant::now();
    for task in tasks {
        // Under valgrind a request takes milliseconds: the deadline is generous but finite.
        let deadline = Duration::from_secs(600).saturating_sub(started.elapsed());
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok((o, e))) => {
                ok += o;
                errors += e;
            }
            _ => errors += 1,
        }
    }
    println!(
        "{}",
        json!({"count": ok, "errors": errors, "body_bytes": body.len()})
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("rate") => {
            let body = args.get(4).cloned().unwrap_or_else(|| CHAT.to_owned());
            rate(args[1].clone(), number(2), number(3), body).await;
        }
        Some("streams") => {
            streams(args[1].clone(), number(2) as usize, number(3), number(4)).await;
        }
        Some("upload") => upload(args[1].clone(), number(2)).await,
        Some("count") => {
            let bytes = if args.len() > 4 {
                number(4) as usize
            } else {
                0
            };
            count(args[1].clone(), number(2), number(3), bytes).await;
        }
        _ => {
            eprintln!("usage: bench_client rate URL RPS SECONDS | streams URL N CHUNKS GAP_MS | upload URL MB | count URL N CONNECTIONS [BYTES]");
            std::process::exit(2);
        }
    }
}
