//! Upstream response bodies passed on chunk by chunk as they arrive (SSE included), with the
//! request timeout bounding every gap between chunks. The access log's usage reader sees every
//! chunk on the way (and may hold back part of one SSE event, see `proxy::usage`).
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::pipeline::record::{AccessLog, Outcome};

/// Why a body stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the upstream body failed: {0}")]
    Upstream(String),
}

pin_project! {
    /// Passes chunks through untouched; the access log line is written when it is dropped, which
    /// is when the client got the last byte or went away (dropping this drops the upstream
    /// response, which cancels the upstream request).
    pub struct ResponseStream<S> {
        #[pin]
        inner: S,
        // Fires at or before `idle_deadline`; re-armed only when it fires early (issue 16:
        // resetting the timer at every chunk cost more than the chunk's own handling). Made
        // the first time the upstream makes the body wait: most JSON answers never do. Boxed
        // then: inline, it made every answer's stream twice as large, and the stream is moved
        // into the response's body box.
        idle: Option<Pin<Box<Sleep>>>,
        // When the gap since the last chunk is too long; `None` until the first chunk or the
        // first wait, whichever comes first (no clock read for it when the stream is made).
        idle_deadline: Option<Instant>,
        idle_timeout: Duration,
        finished: bool,
        // Boxed: the record is large (admission, trace) and this stream moves into the
        // response and the server's state machines (issue 16: memcpy of 2 KB per move).
        log: Box<AccessLog>,
    }
}

impl<S> ResponseStream<S> {
    pub fn new(inner: S, idle_timeout: Duration, log: impl Into<Box<AccessLog>>) -> Self {
        let mut log = log.into();
        log.outcome = Outcome::ClientClosed;
        let status = log.status.unwrap_or(0);
        if let Some(usage) = log.usage.as_mut() {
            if !usage.begin(status, log.stream) {
                log.usage = None;
            }
        }
        Self {
            inner,
            idle: None,
            idle_deadline: None,
            idle_timeout,
            finished: false,
            log,
        }
    }
}

impl<S, E> Stream for ResponseStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let now = Instant::now();
                    let elapsed = now.into_std().saturating_duration_since(this.log.started);
                    if this.log.first_byte.is_none() {
                        this.log.first_byte = Some(elapsed);
                    }
                    *this.idle_deadline = Some(later_by(now, *this.idle_timeout));
                    let out = match this.log.usage.as_mut() {
                        Some(usage) => usage.chunk(chunk, elapsed),
                        None => Some(chunk),
                    };
                    // Nothing to send yet (part of an event held back): read on.
                    let Some(out) = out else { continue };
                    this.log.bytes += out.len() as u64;
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.log.upstream_end();
                    *this.finished = true;
                    this.log.outcome = Outcome::UpstreamBodyError;
                    tracing::warn!(request_id = this.log.request_id(), %error, "upstream body failed mid-way; closing the response");
                    return Poll::Ready(Some(Err(BodyError::Upstream(error.to_string()))));
                }
                Poll::Ready(None) => {
                    // One clock read for the upstream's end and the usage reader's last event.
                    let now = std::time::Instant::now();
                    this.log.upstream_end_at(now);
                    *this.finished = true;
                    this.log.outcome = Outcome::Ok;
                    let elapsed = now.saturating_duration_since(this.log.started);
                    // What the usage reader held back goes out last.
                    let rest = this.log.usage.as_mut().and_then(|u| u.flush(elapsed));
                    if let Some(rest) = rest {
                        this.log.bytes += rest.len() as u64;
                        return Poll::Ready(Some(Ok(rest)));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    // Before any chunk the gap runs from this first wait (the stream is polled
                    // as soon as the answer's head is out).
                    let timeout = *this.idle_timeout;
                    let deadline = *this
                        .idle_deadline
                        .get_or_insert_with(|| later_by(Instant::now(), timeout));
                    let idle = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    while idle.as_mut().poll(cx).is_ready() {
                        let deadline = this.idle_deadline.unwrap_or(deadline);
                        if Instant::now() < deadline {
                            // A chunk came since it was armed: wait for the rest of the gap.
                            idle.as_mut().reset(deadline);
                            continue;
                        }
                        this.log.upstream_end();
                        *this.finished = true;
                        this.log.outcome = Outcome::UpstreamIdleTimeout;
                        tracing::warn!(
                            request_id = this.log.request_id(),
                            timeout_s = this.idle_timeout.as_secs_f64(),
                            "upstream went silent mid-body; closing the response"
                        );
                        return Poll::Ready(Some(Err(BodyError::Idle(*this.idle_timeout))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// `start + duration`, or a time too far to ever be reached when that overflows.
fn later_by(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use futures_util::StreamExt;

    /// Chunks `gap` apart, then silence.
    fn upstream(chunks: usize, gap: Duration) -> impl Stream<Item = Result<Bytes, String>> {
        futures_util::stream::unfold(0, move |sent| async move {
            if sent == chunks {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(gap).await;
            Some((Ok(Bytes::from_static(b"x")), sent + 1))
        })
    }

    fn record() -> AccessLog {
        AccessLog::start(HeaderValue::from_static("req_1"), "POST", "v1/x", None)
    }

    #[actix_web::test]
    async fn chunks_closer_than_the_timeout_keep_a_stream_open_past_it() {
        // Issue 16: the timer is no longer reset at every chunk; a stream whose chunks each come
        // within the timeout must still never time out, however long it lasts in total.
        let timeout = Duration::from_millis(150);
        let stream = ResponseStream::new(upstream(8, Duration::from_millis(50)), timeout, record());
        let started = std::time::Instant::now();
        let items: Vec<_> = stream.take(9).collect().await;
        assert!(started.elapsed() > timeout * 2, "{:?}", started.elapsed());
        assert!(items[..8].iter().all(Result::is_ok));
        // The silence after the last chunk is what times out.
        assert!(
            matches!(items[8], Err(BodyError::Idle(_))),
            "{:?}",
            items[8]
        );
    }
}
