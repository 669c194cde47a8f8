//! Decoding of a `gzip` or `deflate` encoded event stream, for the one case where llmux must read
//! and edit the stream: it asked for the usage event itself and removes it from what the client
//! gets (issue 20: the event reached a client that did not ask, inside a gzip stream llmux could
//! not read). Upstreams are asked for `Accept-Encoding: identity` (awc without compression
//! features); this covers those that encode anyway. Other answers pass encoded, as sent.
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use flate2::write::{MultiGzDecoder, ZlibDecoder};
use futures_util::Stream;
use pin_project_lite::pin_project;

/// A content coding llmux can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    /// The coding a `Content-Encoding` value names, when llmux can decode it (`None` for
    /// `identity`, `br`, `zstd`, several codings, ...).
    pub fn of(value: &HeaderValue) -> Option<Self> {
        let value = value.to_str().ok()?.trim();
        if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            return Some(Self::Gzip);
        }
        value
            .eq_ignore_ascii_case("deflate")
            .then_some(Self::Deflate)
    }
}

enum Inflater {
    Gzip(MultiGzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

impl Inflater {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Self::Gzip(decoder) => {
                decoder.write_all(chunk)?;
                decoder.flush()?;
                decoder.get_mut()
            }
            Self::Deflate(decoder) => {
                decoder.write_all(chunk)?;
                decoder.flush()?;
                decoder.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        let out = match self {
            Self::Gzip(decoder) => {
                decoder.try_finish()?;
                decoder.get_mut()
            }
            Self::Deflate(decoder) => {
                decoder.try_finish()?;
                decoder.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }
}

pin_project! {
    /// `inner`'s bytes decoded, chunk by chunk as they arrive.
    pub struct Decoded<S> {
        #[pin]
        inner: S,
        inflater: Inflater,
        done: bool,
    }
}

impl<S> Decoded<S> {
    pub fn new(inner: S, coding: Coding) -> Self {
        let inflater = match coding {
            Coding::Gzip => Inflater::Gzip(MultiGzDecoder::new(Vec::new())),
            Coding::Deflate => Inflater::Deflate(ZlibDecoder::new(Vec::new())),
        };
        Self {
            inner,
            inflater,
            done: false,
        }
    }
}

impl<S, E> Stream for Decoded<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let decoded = match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(error.to_string())));
                }
                Poll::Ready(Some(Ok(chunk))) => this.inflater.write(&chunk),
                Poll::Ready(None) => {
                    *this.done = true;
                    this.inflater.finish()
                }
            };
            match decoded {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Poll::Ready(Some(Ok(bytes))),
                Err(error) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(format!("cannot decode the answer: {error}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn codings_are_named_case_insensitively_and_unknown_ones_are_left_alone() {
        let check = |value: &'static str, expected: Option<Coding>| {
            assert_eq!(
                Coding::of(&HeaderValue::from_static(value)),
                expected,
                "{value}"
            );
        };
        check("gzip", Some(Coding::Gzip));
        check(" X-GZIP ", Some(Coding::Gzip));
        check("deflate", Some(Coding::Deflate));
        check("identity", None);
        check("br", None);
        check("gzip, br", None);
    }

    #[actix_web::test]
    async fn a_gzip_stream_split_anywhere_decodes_to_its_text() {
        let text = b"data: {\"a\":1}\n\ndata: [DONE]\n\n".repeat(50);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&text).unwrap();
        let encoded = encoder.finish().unwrap();
        for size in [1, 7, 100, encoded.len()] {
            let chunks: Vec<Result<Bytes, String>> = encoded
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let decoded = Decoded::new(futures_util::stream::iter(chunks), Coding::Gzip);
            let out: Vec<Bytes> = decoded.map(|c| c.unwrap()).collect().await;
            assert_eq!(out.concat(), text, "chunks of {size}");
        }
    }
}
