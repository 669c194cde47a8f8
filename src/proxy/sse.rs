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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Frames `chunks` as a stream consumer does: the incomplete tail waits for more.
        fn frame(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
            let mut pending = Vec::new();
            let mut events = Vec::new();
            for chunk in chunks {
                pending.extend_from_slice(chunk);
                while let Some(end) = event_end(&pending) {
                    events.push(pending.drain(..end).collect());
                }
            }
            (events, pending)
        }

        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let event = (
                prop::sample::select(vec!["\n", "\r\n"]),
                prop::option::of("[a-z]{1,8}"),
                "[ -~]{0,40}",
            )
                .prop_map(|(newline, name, data)| {
                    let name = name
                        .map(|n| format!("event: {n}{newline}"))
                        .unwrap_or_default();
                    format!("{name}data: {{\"d\":\"{data}\"}}{newline}{newline}")
                });
            prop::collection::vec(event, 0..8).prop_map(|events| events.concat().into_bytes())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Issue 20: any split of the byte stream gives the same events.
            #[test]
            fn any_split_of_the_stream_gives_the_same_events(
                bytes in stream(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let (whole, rest) = frame(&[&bytes]);
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut from = 0;
                for cut in cuts {
                    chunks.push(&bytes[from..cut]);
                    from = cut;
                }
                chunks.push(&bytes[from..]);
                let (split, split_rest) = frame(&chunks);
                prop_assert_eq!(&split, &whole);
                prop_assert_eq!(split_rest, rest);
                prop_assert_eq!(whole.concat(), bytes.clone());
                let data: Vec<_> = whole.iter().map(|e| event_data(e)).collect();
                prop_assert!(data.iter().all(Option::is_some));
            }
        }
    }
}
