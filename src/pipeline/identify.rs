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

    mod properties {
        use super::*;
        use crate::proxy::json::splice;
        use bytes::Bytes;
        use proptest::prelude::*;

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

            /// The probe never panics, whatever the bytes.
            #[test]
            fn the_probe_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = identify(&bytes);
            }
        }
    }
}
