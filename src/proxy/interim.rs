//! Interim responses (`100 Continue`, `102 Processing`, `103 Early Hints`) skipped on upstream
//! connections, so the client gets the final answer (issue 20: llmux passed the 1xx on as the
//! final status with an empty body). awc takes the first response head as the answer and puts the
//! connection back in its pool with the real answer still unread, where the next request on it
//! would read it: the skipping has to happen below awc, on the connection itself.
//!
//! Hand-written because no HTTP client crate llmux could use offers it: a connector
//! (`SkipInterimConnector`, awc's own TCP connector underneath) whose connections drop each
//! interim head that comes before a response's final head. A response head is expected after
//! each request llmux writes (awc never pipelines: it writes a request whole, then reads its
//! answer whole). Plain-HTTP connections only: under TLS these bytes are ciphertext; HTTP/2
//! (what TLS upstreams negotiate first) frames interim responses apart and h2 skips them.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::http::Uri;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest interim head llmux skips; a longer one is passed on as it is (awc refuses it).
const MAX_INTERIM_HEAD: usize = 64 * 1024;

/// awc's TCP connector with interim responses skipped on plain-HTTP connections.
#[derive(Clone, Default)]
pub struct SkipInterimConnector {
    inner: ConnectorService,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<Connection<Uri, SkipInterim<TcpStream>>, ConnectError>>>>;

impl Service<ConnectInfo<Uri>> for SkipInterimConnector {
    type Response = Connection<Uri, SkipInterim<TcpStream>>;
    type Error = ConnectError;
    type Future = Connecting;

    actix_service::always_ready!();

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let plain = request.request().scheme_str() != Some("https");
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let (io, uri) = connecting.await?.into_parts();
            Ok(Connection::new(uri, SkipInterim::new(io, plain)))
        })
    }
}

/// A connection whose reads skip the interim heads before each final response head.
#[derive(Debug)]
pub struct SkipInterim<IO> {
    io: IO,
    /// Plain HTTP: the bytes are HTTP/1 as sent.
    active: bool,
    /// A request was written and its final head has not been read yet.
    awaiting_head: bool,
    /// Bytes held back: while `awaiting_head`, those read while deciding whether they start an
    /// interim head; after it, those decided to be the answer's, not yet handed to the reader
    /// (never both: the answer's bytes are handed over before another head is awaited).
    /// Boxed and made only when bytes are held, which almost no answer needs: the connection
    /// is moved whole into awc's connection and its futures, and two inline buffers made
    /// each of those moves a `memcpy` (issue 16).
    held: Option<Box<BytesMut>>,
}

impl<IO> SkipInterim<IO> {
    pub fn new(io: IO, active: bool) -> Self {
        Self {
            io,
            active,
            awaiting_head: false,
            held: None,
        }
    }
}

/// What the bytes at the start of an expected response head are.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// An interim head of this many bytes: skip it.
    Interim(usize),
    /// The final head (or not HTTP at all): pass everything on.
    Final,
    /// Too few bytes to tell.
    NeedMore,
}

fn classify(bytes: &[u8]) -> Head {
    const PREFIX: &[u8] = b"HTTP/1.";
    let known = bytes.len().min(PREFIX.len());
    if bytes[..known] != PREFIX[..known] {
        return Head::Final;
    }
    // `HTTP/1.1 1xx`: the status starts at byte 9.
    let Some(status) = bytes.get(9..12) else {
        return Head::NeedMore;
    };
    if status[0] != b'1' || status == b"101" {
        return Head::Final;
    }
    match memchr::memmem::find(bytes, b"\r\n\r\n") {
        Some(end) => Head::Interim(end + 4),
        None if bytes.len() > MAX_INTERIM_HEAD => Head::Final,
        None => Head::NeedMore,
    }
}

/// Hands over as much of `held` as `out` takes; drops the buffer once it is empty.
fn hand_over(held: &mut Option<Box<BytesMut>>, out: &mut ReadBuf<'_>) {
    if let Some(passing) = held.as_mut() {
        let count = passing.len().min(out.remaining());
        out.put_slice(&passing[..count]);
        passing.advance(count);
        if passing.is_empty() {
            *held = None;
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SkipInterim<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.awaiting_head {
            if this.held.is_some() {
                hand_over(&mut this.held, out);
                return Poll::Ready(Ok(()));
            }
            return Pin::new(&mut this.io).poll_read(cx, out);
        }
        // The answer is read straight into the caller's buffer: only bytes that may start an
        // interim head are moved aside (issue 16: a zeroed 8 KB buffer per read cost more than
        // the rest of the response head).
        loop {
            if let Some(head) = this.held.as_mut() {
                match classify(head) {
                    Head::Interim(length) if length > 0 => {
                        head.advance(length);
                        if head.is_empty() {
                            this.held = None;
                        }
                        continue;
                    }
                    Head::Final => {
                        this.awaiting_head = false;
                        hand_over(&mut this.held, out);
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            let before = out.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, out) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let read = &out.filled()[before..];
            if read.is_empty() {
                // The end of the connection: what was held back goes on, then the end.
                this.awaiting_head = false;
                hand_over(&mut this.held, out);
                return Poll::Ready(Ok(()));
            }
            match this.held.as_mut() {
                None if classify(read) == Head::Final => {
                    this.awaiting_head = false;
                    return Poll::Ready(Ok(()));
                }
                None => this.held = Some(Box::new(BytesMut::from(read))),
                Some(head) => head.extend_from_slice(read),
            }
            out.set_filled(before);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SkipInterim<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.active && !buf.is_empty() {
            this.awaiting_head = true;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.active && bufs.iter().any(|b| !b.is_empty()) {
            this.awaiting_head = true;
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: ActixStream> ActixStream for SkipInterim<IO> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if !self.awaiting_head && self.held.is_some() {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        self.io.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.io.poll_write_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_heads_are_told_from_final_ones() {
        assert_eq!(classify(b""), Head::NeedMore);
        assert_eq!(classify(b"HTTP/1.1 1"), Head::NeedMore);
        assert_eq!(classify(b"HTTP/1.1 100 Continue\r\n"), Head::NeedMore);
        assert_eq!(
            classify(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Head::Interim(25)
        );
        assert_eq!(
            classify(b"HTTP/1.1 102 Processing\r\nx: y\r\n\r\n"),
            Head::Interim(33)
        );
        assert_eq!(classify(b"HTTP/1.1 101 Switching"), Head::Final);
        assert_eq!(classify(b"HTTP/1.1 200 OK\r\n"), Head::Final);
        assert_eq!(classify(b"garbage"), Head::Final);
    }

    #[actix_web::test]
    async fn interim_heads_split_anywhere_are_skipped_and_the_final_answer_kept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let sent = [
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"[..],
            answer,
        ]
        .concat();
        for split in 1..sent.len() {
            let (client, mut server) = tokio::io::duplex(64);
            let mut connection = SkipInterim::new(client, true);
            connection
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            let (first, rest) = sent.split_at(split);
            let (first, rest) = (first.to_vec(), rest.to_vec());
            tokio::spawn(async move {
                let mut request = [0u8; 18];
                server.read_exact(&mut request).await.unwrap();
                server.write_all(&first).await.unwrap();
                server.write_all(&rest).await.unwrap();
            });
            let mut received = Vec::new();
            connection.read_to_end(&mut received).await.unwrap();
            assert_eq!(received, answer, "split at {split}");
        }
    }
}
