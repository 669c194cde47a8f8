//! The frame pump of one session: every frame goes on as it arrives, in order, both ways.
//!
//! Each leg is its own WebSocket: pings are answered on the leg they came on, data frames
//! (text, binary, continuations) are relayed one by one, each sent and flushed before the next
//! is read (no buffering past the sockets' own), and a close on one leg is passed to the other
//! with its code and reason.
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, Frame, Item, Message, ProtocolError};
use actix_ws::{MessageStream, Session};
use awc::BoxedSocket;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;

use super::metrics::DirectionCounters;

/// The upstream leg: awc's framed WebSocket.
pub type UpstreamSocket = actix_codec::Framed<BoxedSocket, actix_http::ws::Codec>;

/// How long the other side gets to answer our close before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Who ended a session, for its log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Client,
    Upstream,
    IdleTimeout,
    Shutdown,
    Error,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Client => "client",
            EndedBy::Upstream => "upstream",
            EndedBy::IdleTimeout => "idle_timeout",
            EndedBy::Shutdown => "shutdown",
            EndedBy::Error => "error",
        }
    }
}

/// What a session did, for its one log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub frames_from_client: u64,
    pub frames_from_upstream: u64,
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub struct SessionSummary {
    pub ended_by: EndedBy,
    /// The close code the session ended with (the one passed on, or the one llmux sent).
    pub close_code: Option<u16>,
    /// Why, when llmux ended it or a leg failed.
    pub detail: Option<String>,
    pub tally: Tally,
}

pub struct Legs {
    pub client: Session,
    pub client_stream: MessageStream,
    pub upstream: UpstreamSocket,
    pub from_client: DirectionCounters,
    pub from_upstream: DirectionCounters,
}

/// Relays until either side closes, the session idles for `idle_timeout`, or `shutdown` turns
/// true (then both legs get 1001).
pub async fn relay(
    legs: Legs,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> SessionSummary {
    let Legs {
        mut client,
        mut client_stream,
        upstream,
        from_client,
        from_upstream,
    } = legs;
    let (mut upstream_sink, mut upstream_stream) = upstream.split();
    let mut tally = Tally::default();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    // Set when a shutdown was asked before this session started.
    let shutting_down = *shutdown.borrow();
    if shutting_down {
        let reason = close(CloseCode::Away, "server shutting down");
        close_upstream(
            &mut upstream_sink,
            &mut upstream_stream,
            Some(reason.clone()),
        )
        .await;
        let _ = client.close(Some(reason)).await;
        return SessionSummary {
            ended_by: EndedBy::Shutdown,
            close_code: Some(1001),
            detail: None,
            tally,
        };
    }
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                // A dropped sender means the application is gone: end the same way.
                if changed.is_err() || *shutdown.borrow() {
                    let reason = close(CloseCode::Away, "server shutting down");
                    close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason.clone())).await;
                    let _ = client.close(Some(reason)).await;
                    return SessionSummary { ended_by: EndedBy::Shutdown, close_code: Some(1001), detail: None, tally };
                }
            }
            message = client_stream.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        let reason = protocol_close(&error);
                        let code = u16::from(reason.code);
                        close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason.clone())).await;
                        let _ = client.close(Some(reason)).await;
                        return SessionSummary { ended_by: EndedBy::Error, close_code: Some(code), detail: Some(format!("client: {error}")), tally };
                    }
                    None => {
                        // The client's connection is gone without a close frame.
                        let reason = close(CloseCode::Away, "client disconnected");
                        close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason)).await;
                        return SessionSummary { ended_by: EndedBy::Client, close_code: None, detail: Some("client disconnected without a close frame".into()), tally };
                    }
                };
                tally.frames_from_client += 1;
                let outgoing = match message {
                    Message::Text(text) => {
                        count(&from_client, &from_client.text, text.len(), &mut tally.bytes_from_client);
                        Message::Text(text)
                    }
                    Message::Binary(bytes) => {
                        count(&from_client, &from_client.binary, bytes.len(), &mut tally.bytes_from_client);
                        Message::Binary(bytes)
                    }
                    Message::Continuation(item) => {
                        count(&from_client, &from_client.continuation, item_len(&item), &mut tally.bytes_from_client);
                        Message::Continuation(item)
                    }
                    Message::Ping(bytes) => {
                        from_client.ping.inc();
                        let _ = client.pong(&bytes).await;
                        continue;
                    }
                    Message::Pong(_) => {
                        from_client.pong.inc();
                        continue;
                    }
                    Message::Close(reason) => {
                        from_client.close.inc();
                        let code = reason.as_ref().map(|r| u16::from(r.code));
                        let _ = upstream_sink.send(Message::Close(reason.clone())).await;
                        // The client's close is answered with its own code, as RFC 6455 asks.
                        let _ = client.close(reason).await;
                        await_close(&mut upstream_stream).await;
                        return SessionSummary { ended_by: EndedBy::Client, close_code: code, detail: None, tally };
                    }
                    Message::Nop => continue,
                };
                if let Err(error) = upstream_sink.send(outgoing).await {
                    let reason = close(CloseCode::Error, "upstream connection lost");
                    let _ = client.close(Some(reason)).await;
                    return SessionSummary { ended_by: EndedBy::Error, close_code: Some(1011), detail: Some(format!("sending upstream: {error}")), tally };
                }
            }
            frame = upstream_stream.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        let reason = close(CloseCode::Error, "upstream protocol error");
                        close_upstream(&mut upstream_sink, &mut upstream_stream, Some(protocol_close(&error))).await;
                        let _ = client.close(Some(reason)).await;
                        return SessionSummary { ended_by: EndedBy::Error, close_code: Some(1011), detail: Some(format!("upstream: {error}")), tally };
                    }
                    None => {
                        let reason = close(CloseCode::Error, "upstream connection lost");
                        let _ = client.close(Some(reason)).await;
                        return SessionSummary { ended_by: EndedBy::Upstream, close_code: Some(1011), detail: Some("upstream disconnected without a close frame".into()), tally };
                    }
                };
                tally.frames_from_upstream += 1;
                let sent = match frame {
                    Frame::Text(bytes) => {
                        count(&from_upstream, &from_upstream.text, bytes.len(), &mut tally.bytes_from_upstream);
                        match ByteString::try_from(bytes) {
                            Ok(text) => client.text(text).await,
                            Err(_) => {
                                let reason = close(CloseCode::Invalid, "upstream sent text that is not UTF-8");
                                close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason.clone())).await;
                                let _ = client.close(Some(reason)).await;
                                return SessionSummary { ended_by: EndedBy::Error, close_code: Some(1007), detail: Some("upstream sent invalid UTF-8".into()), tally };
                            }
                        }
                    }
                    Frame::Binary(bytes) => {
                        count(&from_upstream, &from_upstream.binary, bytes.len(), &mut tally.bytes_from_upstream);
                        client.binary(bytes).await
                    }
                    Frame::Continuation(item) => {
                        count(&from_upstream, &from_upstream.continuation, item_len(&item), &mut tally.bytes_from_upstream);
                        client.continuation(item).await
                    }
                    Frame::Ping(bytes) => {
                        from_upstream.ping.inc();
                        let _ = upstream_sink.send(Message::Pong(bytes)).await;
                        continue;
                    }
                    Frame::Pong(_) => {
                        from_upstream.pong.inc();
                        continue;
                    }
                    Frame::Close(reason) => {
                        from_upstream.close.inc();
                        let code = reason.as_ref().map(|r| u16::from(r.code));
                        // The answer to the upstream's close: it ends the upstream leg.
                        let _ = upstream_sink.send(Message::Close(reason.clone())).await;
                        let _ = client.close(reason).await;
                        return SessionSummary { ended_by: EndedBy::Upstream, close_code: code, detail: None, tally };
                    }
                };
                if sent.is_err() {
                    let reason = close(CloseCode::Away, "client disconnected");
                    close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason)).await;
                    return SessionSummary { ended_by: EndedBy::Client, close_code: None, detail: Some("client gone".into()), tally };
                }
            }
            () = &mut idle => {
                let reason = close(CloseCode::Normal, "idle timeout");
                close_upstream(&mut upstream_sink, &mut upstream_stream, Some(reason.clone())).await;
                let _ = client.close(Some(reason)).await;
                return SessionSummary { ended_by: EndedBy::IdleTimeout, close_code: Some(1000), detail: None, tally };
            }
        }
    }
}

fn close(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(description.to_owned()),
    }
}

/// 1009 for a frame over the size limit, 1002 for any other protocol violation.
fn protocol_close(error: &ProtocolError) -> CloseReason {
    match error {
        ProtocolError::Overflow => close(CloseCode::Size, "frame too large"),
        _ => close(CloseCode::Protocol, "protocol error"),
    }
}

fn count(
    counters: &DirectionCounters,
    frames: &prometheus_client::metrics::counter::Counter,
    len: usize,
    total: &mut u64,
) {
    frames.inc();
    counters.bytes.inc_by(len as u64);
    *total += len as u64;
}

fn item_len(item: &Item) -> usize {
    match item {
        Item::FirstText(bytes)
        | Item::FirstBinary(bytes)
        | Item::Continue(bytes)
        | Item::Last(bytes) => bytes.len(),
    }
}

/// Sends a close upstream and reads on until the upstream's answer (or the socket ends), at most
/// `CLOSE_WAIT`: dropping the socket right after the close could lose it, and RFC 6455 lets the
/// side that closes first wait for the answer.
async fn close_upstream<K, S>(sink: &mut K, upstream: &mut S, reason: Option<CloseReason>)
where
    K: futures_util::Sink<Message> + Unpin,
    S: futures_util::Stream<Item = Result<Frame, ProtocolError>> + Unpin,
{
    if sink.send(Message::Close(reason)).await.is_ok() {
        await_close(upstream).await;
    }
}

/// Reads the upstream until its close answer (or the socket ends), at most `CLOSE_WAIT`.
async fn await_close<S>(upstream: &mut S)
where
    S: futures_util::Stream<Item = Result<Frame, ProtocolError>> + Unpin,
{
    let deadline = Instant::now() + CLOSE_WAIT;
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while let Some(Ok(frame)) = upstream.next().await {
            if matches!(frame, Frame::Close(_)) {
                break;
            }
        }
    })
    .await;
}
