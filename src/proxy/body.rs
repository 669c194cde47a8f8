//! JSON request bodies: splice the target model name in place of the client's (found by
//! `pipeline::identify`) without re-serializing anything else (key order, number formatting and
//! escapes stay the client's).
use std::ops::Range;

use bytes::{Bytes, BytesMut};

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
