//! identify: ONE probe of a JSON body finds everything later stages ask about (the `model` and
//! its byte span, `stream`, `stream_options`, `previous_response_id`); no later stage parses
//! the body again for these. serde validates the whole body on the way (a bad body is a 400).
use std::borrow::Cow;
use std::ops::Range;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::errors::ApiError;
use crate::proxy::json::span_of;

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

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    /// `Some("null")` when the member is there with null: it gets replaced, not added again.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    previous_response_id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Validates that `body` is a JSON object with a string `model` and reads what the stages need.
pub fn identify(body: &[u8]) -> Result<Identity<'_>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let probe: Probe<'_> =
        serde_json::from_slice(body).map_err(|source| ApiError::InvalidJson { source })?;
    let raw = probe.model.ok_or_else(missing_model)?.get();
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
    let previous_response_id = match probe.previous_response_id.map(RawValue::get) {
        Some(raw) if raw.starts_with('"') => Some(decode_string(raw)?),
        _ => None,
    };
    Ok(Identity {
        model,
        model_span,
        stream: probe.stream.map(RawValue::get) == Some("true"),
        stream_options: probe
            .stream_options
            .and_then(|raw| span_of(body, raw.get())),
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
}
