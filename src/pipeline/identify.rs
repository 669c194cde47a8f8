//! identify: ONE probe of a JSON body finds everything later stages ask about (the `model` and
//! its byte span, `stream`, `stream_options`, `previous_response_id`); no later stage parses
//! the body again for these. serde validates the whole body on the way (a bad body is a 400).
use std::borrow::Cow;
use std::ops::Range;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::errors::ApiError;
use crate::proxy::json::{find, members, span_of};

/// What the probe found in a request body.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The decoded `model` value (not empty).
    pub model: Cow<'a, str>,
    /// Where the `model` JSON string sits in the body, quotes included.
    pub model_span: Range<usize>,
    /// `"stream": true`.
    pub stream: bool,
    /// Where the `stream_options` value sits, when the member is there (`null` included).
    pub stream_options: Option<Range<usize>>,
    /// A string `previous_response_id`.
    pub previous_response_id: Option<Cow<'a, str>>,
}

/// The raw text of the members the stages ask about, as slices of the body (`None` for a
/// member that is missing or `null`, but `stream_options`, which is `Some("null")` then: it gets
/// replaced, not added again).
#[derive(Debug, Default, PartialEq, Eq)]
struct Probe<'a> {
    model: Option<&'a str>,
    stream: Option<&'a str>,
    stream_options: Option<&'a str>,
    previous_response_id: Option<&'a str>,
}

/// serde's probe: it validates the whole body and reads the four members as raw values.
#[derive(Deserialize)]
struct SerdeProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    previous_response_id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// The body's members by serde (the errors a client sees for a bad body are serde's).
fn serde_probe(body: &[u8]) -> Result<Probe<'_>, ApiError> {
    let probe: SerdeProbe<'_> =
        serde_json::from_slice(body).map_err(|source| ApiError::InvalidJson { source })?;
    Ok(Probe {
        model: probe.model.map(RawValue::get),
        stream: probe.stream.map(RawValue::get),
        stream_options: probe.stream_options.map(RawValue::get),
        previous_response_id: probe.previous_response_id.map(RawValue::get),
    })
}

/// `POST /v1/realtime/client_secrets`: the model is the body's `session.model` (its span is what
/// the attempt rewrites); nothing else of the body matters to the stages.
pub fn identify_session_model(body: &[u8]) -> Result<Identity<'_>, ApiError> {
    let missing = || {
        ApiError::invalid_request(
            "You must provide session.model: a string naming one of the models GET /v1/models lists.",
            Some("session.model"),
        )
    };
    let top = members(body, 0..body.len())?;
    let session = find(&top, "session").ok_or_else(missing)?;
    if body.get(session.value.start) != Some(&b'{') {
        return Err(missing());
    }
    let inner = members(body, session.value.clone())?;
    let model = find(&inner, "model").ok_or_else(missing)?;
    let raw = std::str::from_utf8(&body[model.value.clone()]).map_err(|_| missing())?;
    if !raw.starts_with('"') {
        return Err(missing());
    }
    let decoded = decode_string(raw)?;
    if decoded.is_empty() {
        return Err(missing());
    }
    Ok(Identity {
        model: Cow::Owned(decoded.into_owned()),
        model_span: model.value.clone(),
        stream: false,
        stream_options: None,
        previous_response_id: None,
    })
}

/// The `model` query parameter of the operations that name their model in the URL
/// (`/v1/realtime`, `/v1/realtime/calls`).
pub fn model_of_query(query: &str) -> Result<String, ApiError> {
    let model = actix_web::web::Query::<ModelQuery>::from_query(query)
        .ok()
        .and_then(|q| q.into_inner().model)
        .filter(|m| !m.is_empty());
    model.ok_or_else(|| {
        ApiError::invalid_request(
            "This URL needs the model as a query parameter: ?model=…",
            Some("model"),
        )
    })
}

#[derive(Deserialize)]
struct ModelQuery {
    model: Option<String>,
}

/// Validates that `body` is a JSON object with a string `model` and reads what the stages need.
pub fn identify(body: &[u8]) -> Result<Identity<'_>, ApiError> {
    json_object(body)?;
    // The scan answers for the bodies it is sure of; anything else (a bad body, or one it does
    // not read: escaped keys, invalid UTF-8, deep nesting) goes to serde, whose verdict and
    // error messages stay what clients get.
    let probe = match scan::probe(body) {
        Some(probe) => probe,
        None => serde_probe(body)?,
    };
    identity(body, probe)
}

/// The first check of a body: a JSON object, not any other value.
fn json_object(body: &[u8]) -> Result<(), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
            None,
        ));
    }
    Ok(())
}

/// What the stages need from the probed members.
fn identity<'a>(body: &'a [u8], probe: Probe<'a>) -> Result<Identity<'a>, ApiError> {
    let raw = probe.model.ok_or_else(missing_model)?;
    if !raw.starts_with('"') {
        return Err(ApiError::invalid_request(
            "`model` must be a string naming one of the models GET /v1/models lists.",
            Some("model"),
        ));
    }
    let model_span = span_of(body, raw)
        .ok_or_else(|| ApiError::Internal("model field outside the body".into()))?;
    let model = decode_string(raw)?;
    if model.is_empty() {
        return Err(missing_model());
    }
    let previous_response_id = match probe.previous_response_id {
        Some(raw) if raw.starts_with('"') => Some(decode_string(raw)?),
        _ => None,
    };
    Ok(Identity {
        model,
        model_span,
        stream: probe.stream == Some("true"),
        stream_options: probe.stream_options.and_then(|raw| span_of(body, raw)),
        previous_response_id,
    })
}

/// A JSON string's value, borrowed unless it has escapes.
fn decode_string(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    if raw.contains('\\') {
        return serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|source| ApiError::InvalidJson { source });
    }
    Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
}

fn missing_model() -> ApiError {
    ApiError::invalid_request(
        "You must provide a model parameter: a string naming one of the models GET /v1/models lists.",
        Some("model"),
    )
}

/// A validating scan of the body's top-level object, for the bodies serde reads the same way:
/// `None` (serde decides) for anything it is not sure of.
///
/// Hand-written rather than a crate (issue 16): serde's derived probe cost about 2.9k
/// instructions for a 150-byte chat body, most of it its per-value machinery skipping the
/// `messages` it ignores, and the validating JSON scanners on crates.io (simd-json, jiter) are
/// large dependencies with errors of their own. This one needs no errors: serde gives them.
///
/// It accepts only what serde accepts, with the same raw values: the grammar of serde's
/// `ignore_value` (strings without control characters and with serde's escapes, its number
/// grammar, `true`/`false`/`null`, no trailing commas, whitespace ` \t\n\r`), nothing after the
/// object but whitespace, no known member twice (serde's derive refuses duplicates). It is
/// stricter where that is simpler: the whole body must be UTF-8 (serde checks keys and raw
/// values, not the strings it ignores), keys with escapes and nesting deeper than `MAX_DEPTH`
/// go to serde. `identify`'s tests compare the two on valid, broken and random bodies.
mod scan {
    use super::Probe;

    /// Deeper nesting (serde ignores any depth) is left to serde; one bit per level below.
    const MAX_DEPTH: u32 = 128;

    pub(super) fn probe(body: &[u8]) -> Option<Probe<'_>> {
        // UTF-8 is checked where serde checks it: keys and the four raw values. The strings it
        // ignores it skips unchecked, and so does this scan: a check of the whole body cost
        // 0.44 instructions per byte of a long chat body (issue 16).
        let mut at = whitespace(body, 0);
        if body.get(at) != Some(&b'{') {
            return None;
        }
        at = whitespace(body, at + 1);
        let mut probe = Probe::default();
        // Which known members were seen (a `null` one too: serde's derive refuses it twice).
        let mut seen = [false; 4];
        if body.get(at) == Some(&b'}') {
            return (whitespace(body, at + 1) == body.len()).then_some(probe);
        }
        loop {
            let (key_end, escaped) = string_end(body, at)?;
            if escaped {
                return None;
            }
            let key = body.get(at + 1..key_end - 1)?;
            if !key.is_ascii() {
                std::str::from_utf8(key).ok()?;
            }
            let colon = whitespace(body, key_end);
            if body.get(colon) != Some(&b':') {
                return None;
            }
            let start = whitespace(body, colon + 1);
            let end = value_end(body, start)?;
            let known = match key {
                b"model" => Some((0, &mut probe.model)),
                b"stream" => Some((1, &mut probe.stream)),
                b"stream_options" => Some((2, &mut probe.stream_options)),
                b"previous_response_id" => Some((3, &mut probe.previous_response_id)),
                _ => None,
            };
            if let Some((index, slot)) = known {
                if std::mem::replace(&mut seen[index], true) {
                    return None;
                }
                let raw = std::str::from_utf8(body.get(start..end)?).ok()?;
                // serde reads `null` as no value for an `Option`, but `stream_options` keeps it.
                *slot = match raw {
                    "null" if index != 2 => None,
                    raw => Some(raw),
                };
            }
            let next = whitespace(body, end);
            match body.get(next) {
                Some(b',') => at = whitespace(body, next + 1),
                Some(b'}') => return (whitespace(body, next + 1) == body.len()).then_some(probe),
                _ => return None,
            }
        }
    }

    /// Past the JSON whitespace at `at`.
    #[inline(always)]
    fn whitespace(body: &[u8], mut at: usize) -> usize {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = body.get(at) {
            at += 1;
        }
        at
    }

    /// The end of the string starting at `at` (its opening quote), and whether it has escapes.
    /// Inlined into its three callers (issue 16): a call per string of a short body was a
    /// fifth of the scan.
    #[inline(always)]
    fn string_end(body: &[u8], at: usize) -> Option<(usize, bool)> {
        if body.get(at) != Some(&b'"') {
            return None;
        }
        let mut at = at + 1;
        let mut escaped = false;
        loop {
            at = crate::swar::json_special(body, at)?;
            match body[at] {
                b'"' => return Some((at + 1, escaped)),
                b'\\' => {}
                // A control character in a string is an error to serde.
                _ => return None,
            }
            escaped = true;
            at += match *body.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                b'u' if body.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                _ => return None,
            };
        }
    }

    /// The end of the value starting at `at`, validated.
    fn value_end(body: &[u8], mut at: usize) -> Option<usize> {
        // The open containers, the innermost in the lowest bit: 1 an object, 0 an array.
        let mut open: u128 = 0;
        let mut depth = 0;
        loop {
            // A value starts at `at`.
            at = match *body.get(at)? {
                b'"' => string_end(body, at)?.0,
                b't' => literal(body, at, b"true")?,
                b'f' => literal(body, at, b"false")?,
                b'n' => literal(body, at, b"null")?,
                b'-' | b'0'..=b'9' => number_end(body, at)?,
                container @ (b'{' | b'[') => {
                    let object = container == b'{';
                    let inside = whitespace(body, at + 1);
                    let close = if object { b'}' } else { b']' };
                    if body.get(inside) == Some(&close) {
                        inside + 1
                    } else {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        depth += 1;
                        open = (open << 1) | u128::from(object);
                        at = if object {
                            member_value(body, inside)?
                        } else {
                            inside
                        };
                        continue;
                    }
                }
                _ => return None,
            };
            // A value ends at `at`: close the containers that end here, or go on after a comma.
            loop {
                if depth == 0 {
                    return Some(at);
                }
                let object = open & 1 == 1;
                let next = whitespace(body, at);
                match body.get(next) {
                    Some(b',') => {
                        let value = whitespace(body, next + 1);
                        at = if object {
                            member_value(body, value)?
                        } else {
                            value
                        };
                        break;
                    }
                    Some(b'}') if object => {}
                    Some(b']') if !object => {}
                    _ => return None,
                }
                at = next + 1;
                depth -= 1;
                open >>= 1;
            }
        }
    }

    /// Where the value of the member whose key starts at `at` starts.
    #[inline(always)]
    fn member_value(body: &[u8], at: usize) -> Option<usize> {
        let (key_end, _) = string_end(body, at)?;
        let colon = whitespace(body, key_end);
        (body.get(colon) == Some(&b':')).then(|| whitespace(body, colon + 1))
    }

    fn literal(body: &[u8], at: usize, word: &[u8]) -> Option<usize> {
        (body.get(at..at + word.len()) == Some(word)).then_some(at + word.len())
    }

    /// serde's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number_end(body: &[u8], mut at: usize) -> Option<usize> {
        let digits = |mut at: usize| {
            while body.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            at
        };
        if body.get(at) == Some(&b'-') {
            at += 1;
        }
        at = match *body.get(at)? {
            b'0' if body.get(at + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'0' => at + 1,
            b'1'..=b'9' => digits(at + 1),
            _ => return None,
        };
        if body.get(at) == Some(&b'.') {
            let end = digits(at + 1);
            if end == at + 1 {
                return None;
            }
            at = end;
        }
        if let Some(b'e' | b'E') = body.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = body.get(at) {
                at += 1;
            }
            let end = digits(at);
            if end == at {
                return None;
            }
            at = end;
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::json::splice;
    use bytes::Bytes;

    fn rewrite(body: &str, target: &str) -> Result<String, String> {
        let bytes = Bytes::from(body.to_owned());
        let identity = identify(&bytes).map_err(|e| e.to_string())?;
        let target_json = serde_json::Value::from(target).to_string();
        let out = splice(&bytes, identity.model_span, &target_json);
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    fn check(body: &str, target: &str, expected: &str) {
        assert_eq!(
            rewrite(body, target).as_deref(),
            Ok(expected),
            "body {body}"
        );
    }

    #[test]
    fn only_the_model_bytes_change() {
        check(r#"{"model":"a","x":1}"#, "b", r#"{"model":"b","x":1}"#);
        check(
            r#"{ "messages": [{"model": "inner"}], "model" : "a", "t": 0.1000000000000000055511151231257827, "u": "\u00e9" }"#,
            "target/model",
            r#"{ "messages": [{"model": "inner"}], "model" : "target/model", "t": 0.1000000000000000055511151231257827, "u": "\u00e9" }"#,
        );
        check(r#"{"model":"\u0061"}"#, "q\"uote", r#"{"model":"q\"uote"}"#);
        check("{\"model\":\"caf\u{e9}\"}", "b", r#"{"model":"b"}"#);
    }

    #[test]
    fn one_probe_reads_model_stream_options_and_previous_response() {
        let body = br#"{"model":"meta\/llama","stream":true,"stream_options":null,"previous_response_id":"resp_1"}"#;
        let identity = identify(body).unwrap();
        assert_eq!(identity.model, "meta/llama");
        assert!(identity.stream);
        assert_eq!(&body[identity.stream_options.unwrap()], b"null");
        assert_eq!(identity.previous_response_id.as_deref(), Some("resp_1"));
        let plain =
            identify(br#"{"model":"m","stream":false,"previous_response_id":null}"#).unwrap();
        assert!(!plain.stream);
        assert_eq!(plain.stream_options, None);
        assert_eq!(plain.previous_response_id, None);
    }

    fn check_error(body: &str, needle: &str) {
        let error = rewrite(body, "x").unwrap_err();
        assert!(error.contains(needle), "{body}: {error}");
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        check_error("", "JSON object");
        check_error("[\"model\"]", "JSON object");
        check_error("{\"model\": \"a\"", "parse");
        check_error("{\"model\": 3}", "must be a string");
        check_error("{\"model\": null}", "provide a model");
        check_error("{\"messages\": []}", "provide a model");
        check_error("{\"model\": \"\"}", "provide a model");
        check_error("{\"model\": \"a\", \"model\": \"b\"}", "duplicate");
        check_error("{\"model\": \"a\"} trailing", "parse");
    }

    /// `identify` as it was before the scan (issue 16): serde's probe alone.
    fn identify_by_serde(body: &[u8]) -> Result<Identity<'_>, String> {
        json_object(body).map_err(|e| e.to_string())?;
        let probe = serde_probe(body).map_err(|e| e.to_string())?;
        identity(body, probe).map_err(|e| e.to_string())
    }

    /// The scan answers for `body` exactly when `scanned` says, and then reads what serde
    /// reads; either way `identify` answers what serde's probe alone answered, errors included.
    fn check_scan(body: &str, scanned: bool) {
        let bytes = body.as_bytes();
        let fast = scan::probe(bytes);
        assert_eq!(fast.is_some(), scanned, "scanned {body:?}");
        if let Some(fast) = fast {
            assert_eq!(
                Ok(fast),
                serde_probe(bytes).map_err(|e| e.to_string()),
                "{body:?}"
            );
        }
        assert_eq!(
            identify(bytes).map_err(|e| e.to_string()),
            identify_by_serde(bytes),
            "{body:?}"
        );
    }

    #[test]
    fn the_scan_reads_what_serde_reads_and_leaves_the_rest_to_serde() {
        // Read by the scan.
        check_scan(r#"{"model":"a"}"#, true);
        check_scan("{}", true);
        check_scan(" \t\r\n{ } \n", true);
        check_scan(
            r#"{"model":"m","stream":true,"stream_options":null,"previous_response_id":null}"#,
            true,
        );
        check_scan(
            r#"{"model":null,"stream":null,"stream_options":{"include_usage":true}}"#,
            true,
        );
        check_scan(r#"{"model":3}"#, true);
        check_scan(r#"{"model":"m\u00e9\/\"\\\b\f\n\r\t","x":"\uD800"}"#, true);
        check_scan("{\"model\":\"caf\u{e9}\",\"content\":\"\u{1F600}\"}", true);
        check_scan(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},[],{},[[]]],"model":"m"}"#,
            true,
        );
        check_scan(
            r#"{"n":[0,-0,1.5,-2e10,3E+2,4e-1,0.0e0,12345678901234567890123]}"#,
            true,
        );
        check_scan(r#"{"t":true,"f":false,"z":null,"model":"m"}"#, true);
        // Strings longer than the eight bytes the scan reads at a time, with escapes, quotes
        // and UTF-8 at every offset of a word.
        check_scan(
            r#"{"model":"0123456789abcdef\"01234567\\x","s":"ééééé \u00e9\n"}"#,
            true,
        );
        for offset in 0..17 {
            let pad = "a".repeat(offset);
            check_scan(
                &format!(r#"{{"model":"{pad}\"{pad}","x":"{pad}é{pad}"}}"#),
                true,
            );
            check_scan(&format!("{{\"model\":\"{pad}\u{1}{pad}\"}}"), false);
            check_scan(&format!("{{\"model\":\"{pad}\u{1f}\"}}"), false);
            check_scan(&format!("{{\"model\":\"{pad}"), false);
        }
        check_scan(r#"{"x":1,"x":2,"model":"m"}"#, true);
        check_scan(
            &format!(
                "{{\"deep\":{}1{},\"model\":\"m\"}}",
                "[".repeat(128),
                "]".repeat(128)
            ),
            true,
        );
        // Left to serde: what serde refuses.
        for bad in [
            "",
            "{",
            "}",
            "[]",
            "{\"model\":\"a\"",
            r#"{"model":"a",}"#,
            r#"{"model":"a" "x":1}"#,
            r#"{"model" "a"}"#,
            r#"{model:"a"}"#,
            r#"{"model":"a"}x"#,
            r#"{"model":"a"}{}"#,
            r#"{"x":[1,]}"#,
            r#"{"x":[,1]}"#,
            r#"{"x":{"a":1,}}"#,
            r#"{"x":{"a"}}"#,
            r#"{"x":{1:2}}"#,
            r#"{"x":[1 2]}"#,
            r#"{"x":[}"#,
            r#"{"x":{]}"#,
            r#"{"x":01}"#,
            r#"{"x":-}"#,
            r#"{"x":1.}"#,
            r#"{"x":.5}"#,
            r#"{"x":1e}"#,
            r#"{"x":1e+}"#,
            r#"{"x":+1}"#,
            r#"{"x":tru}"#,
            r#"{"x":nul}"#,
            r#"{"x":True}"#,
            r#"{"x":NaN}"#,
            r#"{"x":"\x"}"#,
            r#"{"x":"\u12"}"#,
            r#"{"x":"\u12G4"}"#,
            "{\"x\":\"a\u{1}b\"}",
            "{\"x\":\"tab\there\"}",
            "{\"x\":\"\n\"}",
            r#"{"x":"open}"#,
            "{\u{c}\"model\":\"a\"}",
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":null,"model":"b"}"#,
            r#"{"stream":true,"stream":true,"model":"a"}"#,
            r#"{"stream_options":null,"stream_options":null,"model":"a"}"#,
            r#"{"x":1}]"#,
            r#"{"model":"a"]"#,
            r#"{"x":[1}"#,
            r#"{"x":{"a":1]}"#,
            r#"{"x":"a\"}"#,
            r#"{"x":"\"#,
        ] {
            check_scan(bad, false);
        }
        // Left to serde: what the scan does not read, whatever serde says of it.
        check_scan(r#"{"mod\u0065l":"a"}"#, false);
        check_scan(r#"{"\u00e9":1,"model":"a"}"#, false);
        check_scan(
            &format!(
                "{{\"deep\":{}1{},\"model\":\"m\"}}",
                "[".repeat(129),
                "]".repeat(129)
            ),
            false,
        );
        check_scan(
            &format!(
                "{{\"deep\":{}{},\"model\":\"m\"}}",
                "{\"a\":".repeat(200),
                "}".repeat(200)
            ),
            false,
        );
        // serde skips the strings it ignores without checking their UTF-8, and so does the
        // scan; a key or a value it reads must be UTF-8.
        let ignored = b"{\"x\":\"\xff\",\"model\":\"a\"}";
        assert!(scan::probe(ignored).is_some());
        for body in [
            &ignored[..],
            b"{\"\xff\":1,\"model\":\"a\"}",
            b"{\"model\":\"\xff\"}",
            b"{\"model\":\"a\",\"stream_options\":{\"a\":\"\xc3\"}}",
        ] {
            assert_eq!(
                identify(body).map_err(|e| e.to_string()),
                identify_by_serde(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(scan::probe(b"{\"\xff\":1,\"model\":\"a\"}"), None);
        assert_eq!(scan::probe(b"{\"model\":\"\xff\"}"), None);
    }

    mod properties {
        use super::*;
        use crate::proxy::json::splice;
        use bytes::Bytes;
        use proptest::prelude::*;

        /// Bytes that matter to JSON's grammar, and a few that break it.
        const JSON_BYTES: &[u8] = b"{}[],:\"\\/ \t\n\r\x0c\x00\x1f0159-+.eEtrufalsnu\xc3\xa9\xff";

        /// A JSON value as text: strings with any characters (escaped by serde), numbers,
        /// literals, arrays and objects, a few levels deep.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| f.to_string()),
                Just("true".to_owned()),
                Just("null".to_owned()),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|items| format!("[{}]", items.join(", "))),
                    prop::collection::vec(("[a-z]{1,3}", inner), 0..3).prop_map(|members| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            })
        }

        /// A request body: other members around a string `model`, with any whitespace.
        fn body() -> impl Strategy<Value = (String, String)> {
            (
                prop::collection::vec(("[a-z_]{1,12}", value()), 0..5),
                any::<String>().prop_filter("a model", |m| !m.is_empty()),
                any::<prop::sample::Index>(),
                prop::sample::select(vec!["", " ", "\n  ", "\t"]),
            )
                .prop_map(|(others, model, at, space)| {
                    let mut members: Vec<String> = others
                        .into_iter()
                        .filter(|(key, _)| {
                            key != "model"
                                && key != "stream"
                                && key != "stream_options"
                                && key != "previous_response_id"
                        })
                        .map(|(key, value)| format!("{space}\"{key}\"{space}:{space}{value}"))
                        .collect();
                    let model_json = serde_json::to_string(&model).unwrap();
                    let at = at.index(members.len() + 1);
                    members.insert(at, format!("{space}\"model\"{space}:{space}{model_json}"));
                    (format!("{{{}{space}}}", members.join(",")), model)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Issue 20: the probe finds the model wherever it is, and splicing a new model at
            /// its span keeps every other byte of the body.
            #[test]
            fn splicing_the_probed_model_keeps_every_other_byte(
                (text, model) in body(),
                replacement in any::<String>().prop_filter("a model", |m| !m.is_empty()),
            ) {
                let body = Bytes::from(text);
                let identity = identify(&body).unwrap();
                prop_assert_eq!(identity.model.as_ref(), model.as_str());
                let span = identity.model_span.clone();
                let new = serde_json::to_string(&replacement).unwrap();
                let out = splice(&body, span.clone(), &new);
                prop_assert_eq!(&out[..span.start], &body[..span.start]);
                prop_assert_eq!(&out[span.start..span.start + new.len()], new.as_bytes());
                prop_assert_eq!(&out[span.start + new.len()..], &body[span.end..]);
                let again = identify(&out).unwrap();
                prop_assert_eq!(again.model.as_ref(), replacement.as_str());
            }

            /// Issue 16: the scan reads every well-formed body the generator makes, as serde
            /// reads it.
            #[test]
            fn the_scan_reads_well_formed_bodies_as_serde_does((text, _) in body()) {
                let bytes = text.as_bytes();
                let fast = scan::probe(bytes);
                prop_assert!(fast.is_some(), "not scanned: {}", text);
                prop_assert_eq!(Ok(fast.unwrap()), serde_probe(bytes).map_err(|e| e.to_string()));
            }

            /// Issue 16: a broken body gets serde's verdict, whatever the break.
            #[test]
            fn identify_answers_what_serde_answers_for_broken_bodies(
                (text, _) in body(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(JSON_BYTES.to_vec())), 1..4),
            ) {
                let mut bytes = text.into_bytes();
                for (at, kind, byte) in edits {
                    let at = at.index(bytes.len() + 1);
                    match kind {
                        0 if at < bytes.len() => { bytes.remove(at); }
                        1 if at < bytes.len() => bytes[at] = byte,
                        _ => bytes.insert(at, byte),
                    }
                }
                if let Some(fast) = scan::probe(&bytes) {
                    prop_assert_eq!(Ok(fast), serde_probe(&bytes).map_err(|e| e.to_string()));
                }
                prop_assert_eq!(identify(&bytes).map_err(|e| e.to_string()), identify_by_serde(&bytes));
            }

            /// The probe never panics, whatever the bytes.
            #[test]
            fn the_probe_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = identify(&bytes);
            }
        }
    }
}
