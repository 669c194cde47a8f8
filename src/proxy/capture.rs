//! Learns the id of a response the Responses API creates while its answer passes through, without
//! holding any chunk back: from the JSON answer, or from the `response.created` event of a stream.
//! The id is remembered before the chunk that completes it goes to the client, so a client that
//! asks for the response right after creating it finds it.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use bytes::{Bytes, BytesMut};
use pin_project_lite::pin_project;
use serde::Deserialize;

use super::sse::{event_data, event_end};
use crate::routing::endpoint::Endpoint;
use crate::routing::responses::ResponseOwners;

/// Bytes copied aside at most while looking for the id.
const MAX_SCANNED: usize = 4 * 1024 * 1024;
/// Stream events read at most while looking for `response.created` (it is the first).
const MAX_EVENTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Json,
    EventStream,
}

pin_project! {
    /// Passes `inner` through unchanged and remembers the response id it carries.
    pub struct CaptureResponseId<B> {
        #[pin]
        inner: B,
        kind: AnswerKind,
        seen: BytesMut,
        events: usize,
        done: bool,
        owners: Arc<ResponseOwners>,
        endpoint: Arc<Endpoint>,
    }
}

impl<B> CaptureResponseId<B> {
    pub fn new(
        inner: B,
        kind: AnswerKind,
        owners: Arc<ResponseOwners>,
        endpoint: Arc<Endpoint>,
    ) -> Self {
        Self {
            inner,
            kind,
            seen: BytesMut::new(),
            events: 0,
            done: false,
            owners,
            endpoint,
        }
    }
}

impl<B: MessageBody> MessageBody for CaptureResponseId<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            if !*this.done {
                this.seen.extend_from_slice(chunk);
                let found = match this.kind {
                    AnswerKind::Json => json_id(this.seen),
                    AnswerKind::EventStream => event_id(this.seen, this.events),
                };
                if let Some(id) = found {
                    this.owners.remember(&id, this.endpoint);
                    *this.done = true;
                }
                if this.seen.len() > MAX_SCANNED || *this.events >= MAX_EVENTS {
                    *this.done = true;
                }
                if *this.done {
                    *this.seen = BytesMut::new();
                }
            }
        }
        polled
    }
}

#[derive(Deserialize)]
struct IdProbe {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct EventProbe {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    response: Option<IdProbe>,
}

/// The top-level `id` once the JSON answer is complete.
fn json_id(seen: &[u8]) -> Option<String> {
    let end = seen.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if seen[end] != b'}' {
        return None;
    }
    serde_json::from_slice::<IdProbe>(seen).ok()?.id
}

/// The response id of a `response.created` event among the complete events seen so far; each
/// complete event is consumed.
fn event_id(seen: &mut BytesMut, events: &mut usize) -> Option<String> {
    while let Some(end) = event_end(seen) {
        let event = seen.split_to(end);
        *events += 1;
        let Some(data) = event_data(&event) else {
            continue;
        };
        let Ok(probe) = serde_json::from_slice::<EventProbe>(data) else {
            continue;
        };
        if probe.kind.as_deref() == Some("response.created") {
            return probe.response.and_then(|r| r.id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_of_a_json_answer_is_read_once_it_is_complete() {
        assert_eq!(json_id(br#"{"id":"resp_1","object":"resp"#), None);
        assert_eq!(
            json_id(
                b"{\"object\":\"response\",\"output\":[{\"id\":\"msg_1\"}],\"id\":\"resp_1\"}\n"
            ),
            Some("resp_1".into())
        );
    }

    #[test]
    fn the_id_of_a_stream_comes_from_response_created_across_chunks() {
        let mut seen = BytesMut::new();
        let mut events = 0;
        seen.extend_from_slice(b"event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"re");
        assert_eq!(event_id(&mut seen, &mut events), None);
        seen.extend_from_slice(b"sp_9\",\"output\":[]}}\r\n\r\nevent: x\n");
        assert_eq!(event_id(&mut seen, &mut events), Some("resp_9".into()));
        assert_eq!(events, 1);
    }
}
