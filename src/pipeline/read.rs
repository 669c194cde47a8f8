//! read: the request body, bounded. JSON bodies are read whole up to `--max-body-bytes` (413
//! before reading when `Content-Length` announces more); multipart bodies are streamed by
//! `proxy::multipart`, which reads only up to the `model` field before routing. A client silent
//! mid-body for `--client-body-timeout` gets a 408 (issue 20: a stalled body kept the request
//! open indefinitely).
use std::task::Poll;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};

use crate::errors::ApiError;
use crate::pipeline::operation::Operation;

/// Refuses a protocol upgrade (WebSocket) on an endpoint that takes a body: the body of such a
/// request is the upgraded stream, which never ends, so reading it waited forever (issue 20:
/// no answer at all). Answered at once, before any body is read.
pub fn refuse_upgrade(request: &HttpRequest, operation: Operation) -> Result<(), ApiError> {
    // actix reads the body of a request with `Upgrade: websocket` as the upgraded stream; other
    // upgrades (`h2c`) keep their body and are served as plain HTTP/1.1.
    let websocket = request
        .headers()
        .get_all(header::UPGRADE)
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.trim().eq_ignore_ascii_case("websocket"));
    match websocket {
        true => Err(ApiError::UpgradeNotSupported {
            path: operation.path(),
        }),
        false => Ok(()),
    }
}

/// Reads the whole body, refusing anything over `limit` bytes before reading it when the client
/// announced its length, and a client silent for `idle_timeout` between chunks.
pub async fn json_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, ApiError> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // The first chunk is kept as it came: a body that arrives in one chunk (most of them) is
    // never copied (issue 16). Later chunks are gathered in one buffer sized by Content-Length.
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    // Whether the one wait without a timer is used (below).
    let mut waited = false;
    loop {
        // A chunk (or the end) that is there already needs no timer: most bodies arrive with
        // their head (issue 16: arming and dropping the timer cost ~0.6k instructions per
        // request). Polling `next` once without a waker loses nothing: the polls below look
        // again and register the task's waker.
        let next = match payload.next().now_or_never() {
            Some(next) => next,
            None => {
                // actix's h1 dispatcher polls the handler as soon as it has decoded the head,
                // before it feeds the body bytes read with it, and polls it again in the same
                // turn once they are fed (`handle_request`, then `poll_response`). So the first
                // wait yields once without a timer (issue 16: the timer was armed for every
                // request); a body that is not there at the next poll gets the timer from then.
                let early = match std::mem::replace(&mut waited, true) {
                    true => None,
                    false => next_after_one_yield(&mut payload).await,
                };
                match early {
                    Some(next) => next,
                    None => tokio::time::timeout(idle_timeout, payload.next())
                        .await
                        .map_err(|_| ApiError::ClientBodyTimeout {
                            timeout: idle_timeout,
                        })?,
                }
            }
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|e| ApiError::BadPayload(e.to_string()))?;
        let read = first.as_ref().map_or(0, Bytes::len) + body.len();
        if read + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            held => {
                if body.is_empty() {
                    body.reserve(announced.unwrap_or(1024).min(limit));
                }
                if let Some(held) = held {
                    body.extend_from_slice(&held);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    Ok(match first {
        Some(whole) => whole,
        None => body.freeze(),
    })
}

/// The payload's next item if it is there now or at the next poll (`None` if not): polls with
/// the task's waker, so a chunk fed in between wakes it, and yields once.
async fn next_after_one_yield(
    payload: &mut web::Payload,
) -> Option<Option<Result<Bytes, actix_web::error::PayloadError>>> {
    let mut yielded = false;
    std::future::poll_fn(|cx| match payload.poll_next_unpin(cx) {
        Poll::Ready(next) => Poll::Ready(Some(next)),
        Poll::Pending if !yielded => {
            yielded = true;
            Poll::Pending
        }
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
