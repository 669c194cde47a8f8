//! The JSON-span toolkit every body rewrite uses: find a member's span, then splice bytes at
//! spans, so what is not rewritten reaches the other side byte for byte as sent (key order,
//! number formatting and escapes stay the sender's). Spans come from serde's borrowed raw
//! values (`span_of`), never from re-serializing.
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};

use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::ApiError;

/// `body` with the bytes of `span` replaced by `replacement`.
pub fn splice(body: &Bytes, span: Range<usize>, replacement: &str) -> Bytes {
    if &body[span.clone()] == replacement.as_bytes() {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - span.len() + replacement.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(replacement.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

/// Spliced bodies up to this size are copied into one buffer: awc then sends them as bytes,
/// not as a boxed body polled part by part (issue 16: that cost more than copying a few KB).
pub const ONE_BUFFER_LIMIT: usize = 4 * 1024;

/// A request body sent as parts: the client's bytes before a span, the replacement, the client's
/// bytes after it. Slices of the body as read, so a spliced model costs no copy of the body
/// (issue 16: the copy was a third of llmux's cost per byte of a large body); the upstream
/// connection writes the parts one after the other, with the whole length announced. A body
/// sent whole (unchanged, or spliced and at most `ONE_BUFFER_LIMIT`) is one part.
#[derive(Debug, Clone)]
pub struct SplicedBody {
    parts: [Bytes; 3],
    next: usize,
}

impl SplicedBody {
    /// `body` with `span` replaced by `replacement`; the body as it is when they are equal.
    pub fn new(body: &Bytes, span: Range<usize>, replacement: &[u8]) -> Self {
        if &body[span.clone()] == replacement {
            return Self::whole(body.clone());
        }
        let length = body.len() - span.len() + replacement.len();
        if length <= ONE_BUFFER_LIMIT {
            let mut out = BytesMut::with_capacity(length);
            out.extend_from_slice(&body[..span.start]);
            out.extend_from_slice(replacement);
            out.extend_from_slice(&body[span.end..]);
            return Self::whole(out.freeze());
        }
        Self {
            parts: [
                body.slice(..span.start),
                Bytes::copy_from_slice(replacement),
                body.slice(span.end..),
            ],
            next: 0,
        }
    }

    pub fn whole(body: Bytes) -> Self {
        Self {
            parts: [body, Bytes::new(), Bytes::new()],
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts as one buffer (a copy unless the body is whole).
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts {
            [whole, second, third] if second.is_empty() && third.is_empty() => whole.clone(),
            parts => parts.concat().into(),
        }
    }
}

impl MessageBody for SplicedBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.len() as u64)
    }

    /// A body in one part goes to awc as bytes: it writes them at once, unboxed.
    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self {
            Self {
                parts: [whole, second, third],
                next: 0,
            } if second.is_empty() && third.is_empty() => Ok(whole),
            other => Err(other),
        }
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        while let Some(part) = this.parts.get_mut(this.next) {
            this.next += 1;
            if !part.is_empty() {
                return Poll::Ready(Some(Ok(std::mem::take(part))));
            }
        }
        Poll::Ready(None)
    }
}

/// One member of a JSON object: its key and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    /// From the key's opening quote to the value's last byte.
    pub span: Range<usize>,
    pub value: Range<usize>,
}

/// The members of the object at `object` (a span of `body`), in order.
pub fn members(body: &[u8], object: Range<usize>) -> Result<Vec<Member>, ApiError> {
    let text = &body[object.clone()];
    let raw: RawMembers<'_> =
        serde_json::from_slice(text).map_err(|source| ApiError::InvalidJson { source })?;
    let mut cursor = object.start
        + text
            .iter()
            .position(|b| *b == b'{')
            .ok_or_else(|| ApiError::invalid_request("The body must be a JSON object.", None))?
        + 1;
    let mut out = Vec::with_capacity(raw.0.len());
    for (key, value) in raw.0 {
        let value = span_of(body, value.get())
            .ok_or_else(|| ApiError::Internal("member outside the body".into()))?;
        let key_start = cursor
            + body[cursor..value.start]
                .iter()
                .position(|b| *b == b'"')
                .ok_or_else(|| ApiError::Internal("member key not found".into()))?;
        cursor = value.end;
        out.push(Member {
            key,
            span: key_start..value.end,
            value,
        });
    }
    Ok(out)
}

/// The spans of the elements of the array at `array` (a span of `body`), in order.
pub fn elements(body: &[u8], array: Range<usize>) -> Result<Vec<Range<usize>>, ApiError> {
    let raw: Vec<&RawValue> =
        serde_json::from_slice(&body[array]).map_err(|source| ApiError::InvalidJson { source })?;
    raw.into_iter()
        .map(|element| {
            span_of(body, element.get())
                .ok_or_else(|| ApiError::Internal("element outside the body".into()))
        })
        .collect()
}

pub fn find<'m>(members: &'m [Member], key: &str) -> Option<&'m Member> {
    members.iter().find(|m| m.key == key)
}

/// Where `part`, a slice borrowed from `body`, sits in it.
pub fn span_of(body: &[u8], part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start + part.len();
    (body.get(span.clone()) == Some(part.as_bytes())).then_some(span)
}

/// `body` with each span replaced; spans do not overlap.
pub fn apply(body: &Bytes, mut edits: Vec<(Range<usize>, String)>) -> Bytes {
    if edits.is_empty() {
        return body.clone();
    }
    edits.sort_by_key(|(span, _)| span.start);
    let grow: usize = edits.iter().map(|(_, text)| text.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grow);
    let mut copied = 0;
    for (span, text) in edits {
        out.extend_from_slice(&body[copied..span.start]);
        out.extend_from_slice(text.as_bytes());
        copied = span.end;
    }
    out.extend_from_slice(&body[copied..]);
    out.freeze()
}

/// An object's members as (key, raw value) in order, duplicates kept.
struct RawMembers<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((key, value));
                }
                Ok(RawMembers(out))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the upstream connection writes for `body`: its parts in order, as awc polls them.
    fn sent(mut body: SplicedBody) -> (BodySize, Vec<u8>) {
        let size = body.size();
        let waker = futures_util::task::noop_waker();
        let mut context = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(part))) = Pin::new(&mut body).poll_next(&mut context) {
            assert!(!part.is_empty(), "an empty part was sent");
            out.extend_from_slice(&part);
        }
        (size, out)
    }

    fn check(body: &str, span: Range<usize>, replacement: &str) {
        let bytes = Bytes::from(body.to_owned());
        let spliced = SplicedBody::new(&bytes, span.clone(), replacement.as_bytes());
        let expected = splice(&bytes, span, replacement);
        assert_eq!(spliced.to_bytes(), expected);
        let (size, written) = sent(spliced);
        assert_eq!(size, BodySize::Sized(expected.len() as u64));
        assert_eq!(written, expected, "{body}");
    }

    #[test]
    fn a_spliced_body_sends_exactly_the_spliced_bytes() {
        check(r#"{"model":"a","x":1}"#, 9..12, r#""target""#);
        check(r#"{"model":"a"}"#, 9..12, r#""b""#);
        check(r#""a""#, 0..3, r#""longer/name""#);
        check(r#"{"model":"same"}"#, 9..15, r#""same""#);
    }

    #[test]
    fn small_spliced_bodies_go_as_one_buffer_and_large_ones_as_slices_of_the_body() {
        // Issue 16: a small body is cheaper copied than sent in parts; a large one is not copied.
        let small = Bytes::from_static(br#"{"model":"a","x":1}"#);
        let spliced = SplicedBody::new(&small, 9..12, br#""target""#);
        assert_eq!(
            spliced.try_into_bytes().unwrap(),
            &br#"{"model":"target","x":1}"#[..]
        );
        let filler = "x".repeat(ONE_BUFFER_LIMIT);
        let large = Bytes::from(format!(r#"{{"model":"a","x":"{filler}"}}"#));
        let spliced = SplicedBody::new(&large, 9..12, br#""target""#);
        assert_eq!(spliced.parts[0].as_ptr(), large.as_ptr());
        let spliced = spliced.try_into_bytes().unwrap_err();
        assert_eq!(spliced.to_bytes(), splice(&large, 9..12, r#""target""#));
        // Right at the limit: one buffer.
        let at_limit = Bytes::from(format!(
            r#"{{"model":"a","x":"{}"}}"#,
            &filler[..ONE_BUFFER_LIMIT - 25]
        ));
        let spliced = SplicedBody::new(&at_limit, 9..12, br#""target""#);
        assert_eq!(spliced.len(), ONE_BUFFER_LIMIT);
        assert!(spliced.try_into_bytes().is_ok());
    }

    #[test]
    fn an_unchanged_model_sends_the_body_as_read() {
        let body = Bytes::from_static(br#"{"model":"same"}"#);
        let spliced = SplicedBody::new(&body, 9..15, br#""same""#);
        // The same buffer, not a copy of it.
        assert_eq!(spliced.to_bytes().as_ptr(), body.as_ptr());
    }
}
