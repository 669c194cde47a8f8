//! Upstream response bodies passed on chunk by chunk as they arrive (SSE included), with the
//! request timeout bounding every gap between chunks.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::log::AccessLog;

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
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        finished: bool,
        log: AccessLog,
    }
}

impl<S> ResponseStream<S> {
    pub fn new(inner: S, idle_timeout: Duration, mut log: AccessLog) -> Self {
        log.outcome = "client_closed";
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
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
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if this.log.first_byte.is_none() {
                    this.log.first_byte = Some(this.log.started.elapsed());
                }
                this.log.bytes += chunk.len() as u64;
                this.idle
                    .as_mut()
                    .reset(Instant::now() + *this.idle_timeout);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                *this.finished = true;
                this.log.outcome = "upstream_body_error";
                tracing::warn!(request_id = this.log.request_id(), %error, "upstream body failed mid-way; closing the response");
                Poll::Ready(Some(Err(BodyError::Upstream(error.to_string()))))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                this.log.outcome = "ok";
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    *this.finished = true;
                    this.log.outcome = "upstream_idle_timeout";
                    tracing::warn!(
                        request_id = this.log.request_id(),
                        timeout_s = this.idle_timeout.as_secs_f64(),
                        "upstream went silent mid-body; closing the response"
                    );
                    return Poll::Ready(Some(Err(BodyError::Idle(*this.idle_timeout))));
                }
                Poll::Pending
            }
        }
    }
}
