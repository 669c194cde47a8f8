//! The floor of llmux's stack, for the benchmarks (bench/run.sh, bench/instructions.sh), not for
//! tests: a bare actix-web + awc forwarder with no logic. Every request goes to the upstream with
//! its method, path and headers; small bodies are read whole and sent with a length (as llmux does
//! for JSON), large ones streamed; the answer streams back. No routing, no logging, no metrics.
//!
//! Usage: forwarder PORT UPSTREAM_BASE_URL [WORKERS]
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer};

/// Bodies up to this size are read whole, like llmux reads JSON bodies; larger ones stream.
const WHOLE_BODY_LIMIT: usize = 4 * 1024 * 1024;

struct Upstream(String);

async fn forward(
    request: HttpRequest,
    mut payload: web::Payload,
    upstream: web::Data<Upstream>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = client.request(request.method().clone(), format!("{}{path}", upstream.0));
    for (name, value) in request.headers() {
        if name != header::CONNECTION && name != header::HOST {
            outgoing = outgoing.append_header((name.clone(), value.clone()));
        }
    }
    let length: Option<usize> = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let sent = match length {
        Some(length) if length <= WHOLE_BODY_LIMIT => {
            let mut body = web::BytesMut::with_capacity(length);
            while let Some(chunk) = futures_util::StreamExt::next(&mut payload).await {
                match chunk {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(error) => return HttpResponse::BadRequest().body(error.to_string()),
                }
            }
            outgoing.send_body(body.freeze()).await
        }
        _ => outgoing.send_stream(payload).await,
    };
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(error) => return HttpResponse::BadGateway().body(error.to_string()),
    };
    let mut response = HttpResponse::build(answer.status());
    for (name, value) in answer.headers() {
        if name != header::CONNECTION && name != header::CONTENT_LENGTH {
            response.append_header((name.clone(), value.clone()));
        }
    }
    // Like llmux: an answer with a length keeps it, others are chunked.
    let length = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) => response.body(SizedStream::new(length, answer.take_payload())),
        None => response.streaming(answer),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9200);
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9100".to_owned());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let upstream = web::Data::new(Upstream(upstream.trim_end_matches('/').to_owned()));
    HttpServer::new(move || {
        // One client per worker, with llmux's pool settings (keep-alive, no connection limit).
        let connector = awc::Connector::new()
            .limit(0)
            .conn_keep_alive(Duration::from_secs(60))
            .conn_lifetime(Duration::from_secs(600));
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .disable_redirects()
            .no_default_headers()
            .finish();
        App::new()
            .app_data(upstream.clone())
            .app_data(web::Data::new(client))
            .default_service(web::to(forward))
    })
    .workers(workers)
    .backlog(4096)
    .max_connections(100_000)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
