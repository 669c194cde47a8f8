//! JSON request bodies: find the top-level `model`, and splice the target model name in its place
//! without re-serializing anything else (key order, number formatting and escapes stay the client's).
use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::ApiError;

/// The `model` member of a request body: its decoded value and where its JSON string sits.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelField<'a> {
    pub model: Cow<'a, str>,
    pub span: Range<usize>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// Validates that `body` is a JSON object and finds its `model`.
pub fn find_model(body: &[u8]) -> Result<ModelField<'_>, ApiError> {
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
    let start = (raw.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .ok_or_else(|| ApiError::Internal("model field outside the body".into()))?;
    let span = start..start + raw.len();
    if body.get(span.clone()) != Some(raw.as_bytes()) {
        return Err(ApiError::Internal("model field outside the body".into()));
    }
    let model = if raw.contains('\\') {
        Cow::Owned(
            serde_json::from_str::<String>(raw)
                .map_err(|source| ApiError::InvalidJson { source })?,
        )
    } else {
        Cow::Borrowed(&raw[1..raw.len() - 1])
    };
    if model.is_empty() {
        return Err(missing_model());
    }
    Ok(ModelField { model, span })
}

fn missing_model() -> ApiError {
    ApiError::invalid_request(
        "You must provide a model parameter: a string naming one of the models GET /v1/models lists.",
        Some("model"),
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &str, target: &str) -> Result<String, String> {
        let bytes = Bytes::from(body.to_owned());
        let field = find_model(&bytes).map_err(|e| e.to_string())?;
        let target_json = serde_json::Value::from(target).to_string();
        let out = splice(&bytes, field.span, &target_json);
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
    fn the_model_value_is_decoded() {
        let body = br#"{"model":"meta\/llama"}"#;
        assert_eq!(find_model(body).unwrap().model, "meta/llama");
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
