//! The one SSE framer every response tap uses: where an event ends (its blank line, `\n\n` or
//! `\n\r\n`, so `\r\n\r\n` too) and its `data:` payload. The usage reader and the response-id
//! capture both frame with it, so they agree on event boundaries.

/// The end of the first complete event in `bytes` (after its blank line).
pub fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(newline) = memchr::memchr(b'\n', &bytes[from..]).map(|i| from + i) {
        match bytes.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => from = newline + 1,
        }
    }
    None
}

/// The `data:` payload of an event (its first data line: OpenAI-style events have one).
pub fn event_data(event: &[u8]) -> Option<&[u8]> {
    let mut rest = event;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        return data.starts_with(b"{").then_some(data);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_their_blank_line_whatever_the_line_endings() {
        assert_eq!(event_end(b"data: {}\n\ndata: x"), Some(10));
        assert_eq!(event_end(b"data: {}\r\n\r\nrest"), Some(12));
        assert_eq!(event_end(b"event: a\ndata: {}\n"), None);
        assert_eq!(
            event_data(b"event: a\r\ndata: {\"a\":1}\r\n\r\n"),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(event_data(b"data: [DONE]\n\n"), None);
    }
}
