//! Request body rewrites an endpoint asks for, beyond the model: `drop_params`,
//! the json_schema -> json_object fallback, and float embeddings upstream encoded as base64 for
//! the client. Every rewrite splices bytes at the spans of the members it changes, so the rest of
//! the body reaches the upstream byte for byte as the client sent it.
use std::ops::Range;
use std::sync::Arc;

use actix_web::body;
use actix_web::http::header;
use actix_web::HttpResponse;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{apply, find, members, span_of, splice, SplicedBody};
use crate::errors::ApiError;
use crate::pipeline::operation::Operation;
use crate::routing::endpoint::{Endpoint, UpstreamImageFormat};

/// The largest upstream embeddings answer read whole to encode it as base64.
pub const MAX_EMBEDDINGS_ANSWER: usize = 256 * 1024 * 1024;

/// What the answer to a rewritten request needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerRewrite {
    /// The client asked for base64 embeddings, the upstream was asked for float.
    pub base64_embeddings: bool,
    /// A Responses API request: remember which endpoint created the response.
    pub capture_response_id: bool,
    /// An images request: its answer's images become URLs of this instance.
    pub images: Option<ImagesAnswer>,
}

/// What the client of an images request wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagesAnswer {
    /// The client asked for URLs (the default), not `b64_json`.
    pub wants_url: bool,
}

impl ImagesAnswer {
    /// From the `response_format` the client asked for.
    pub fn asked(response_format: Option<&str>) -> Self {
        Self {
            wants_url: !matches!(response_format, Some(format) if format != "url"),
        }
    }
}

/// Rewrites a request body for `endpoint`: the model (unless `model_field: false`), then
/// `drop_params`, `response_format_fallback`, `upstream_embedding_format` and
/// `upstream_image_format`.
pub fn request(
    endpoint: &Endpoint,
    operation: Operation,
    body: &Bytes,
    model_span: Range<usize>,
) -> Result<(SplicedBody, AnswerRewrite), ApiError> {
    let path = operation.path();
    let mut answer = AnswerRewrite {
        capture_response_id: operation.creates_response(),
        ..AnswerRewrite::default()
    };
    let more = !endpoint.drop_params.is_empty()
        || (endpoint.json_object_fallback
            && matches!(path, "v1/chat/completions" | "v1/responses"))
        || (endpoint.float_embeddings_upstream && path == "v1/embeddings")
        || operation == Operation::ImagesGenerations;
    if !more {
        // Only the model changes (most requests): sent as slices of the client's body.
        let body = match endpoint.model_field {
            true => SplicedBody::new(body, model_span, endpoint.target_model_json.as_bytes()),
            false => SplicedBody::whole(body.clone()),
        };
        return Ok((body, answer));
    }
    let mut body = match endpoint.model_field {
        true => splice(body, model_span, &endpoint.target_model_json),
        false => body.clone(),
    };
    if !endpoint.drop_params.is_empty() {
        body = drop_members(&body, &endpoint.drop_params)?;
    }
    if endpoint.json_object_fallback {
        body = match path {
            "v1/chat/completions" => chat_json_object_fallback(&body)?,
            "v1/responses" => responses_json_object_fallback(&body)?,
            _ => body,
        };
    }
    if endpoint.float_embeddings_upstream && path == "v1/embeddings" {
        let members = members(&body, 0..body.len())?;
        if let Some(format) = find(&members, "encoding_format") {
            if &body[format.value.clone()] == b"\"base64\"" {
                body = apply(&body, vec![(format.value.clone(), "\"float\"".into())]);
                answer.base64_embeddings = true;
            }
        }
    }
    if operation == Operation::ImagesGenerations {
        let (asked, rewritten) = ask_for_b64_json(&body, endpoint.upstream_image_format)?;
        answer.images = Some(ImagesAnswer::asked(asked.as_deref()));
        body = rewritten;
    }
    Ok((SplicedBody::whole(body), answer))
}

/// For `b64_json` endpoints, sets `response_format` to `b64_json` (splicing its value, or
/// adding the member first) and returns what the client asked for; every other byte stays.
fn ask_for_b64_json(
    body: &Bytes,
    format: UpstreamImageFormat,
) -> Result<(Option<String>, Bytes), ApiError> {
    let top = members(body, 0..body.len())?;
    let existing = find(&top, "response_format");
    let asked =
        existing.and_then(|m| serde_json::from_slice::<String>(&body[m.value.clone()]).ok());
    if format != UpstreamImageFormat::B64Json {
        return Ok((asked, body.clone()));
    }
    let edit = match existing {
        Some(member) => (member.value.clone(), "\"b64_json\"".to_owned()),
        None => {
            let at = top.first().map(|first| first.span.start);
            match at {
                Some(at) => (at..at, "\"response_format\":\"b64_json\",".to_owned()),
                None => {
                    let open = body.iter().position(|b| *b == b'{').map_or(0, |at| at + 1);
                    (open..open, "\"response_format\":\"b64_json\"".to_owned())
                }
            }
        }
    };
    Ok((asked, apply(body, vec![edit])))
}

/// Whether a multipart field is removed by the endpoint's `drop_params`.
pub fn dropped(endpoint: &Endpoint, field_name: &str) -> bool {
    endpoint
        .drop_params
        .iter()
        .any(|name| &**name == field_name)
}

/// Applies what `request` said the answer needs to the upstream's answer (the response-id
/// capture is the route stage's tap: `pipeline::route::capture_response_id`).
pub async fn answer(
    rewrite: AnswerRewrite,
    endpoint: &Arc<Endpoint>,
    response: HttpResponse,
) -> Result<HttpResponse, ApiError> {
    match rewrite.base64_embeddings {
        true => encode_embeddings(endpoint, response).await,
        false => Ok(response),
    }
}

/// Encodes the float embeddings of an upstream answer as base64, as OpenAI does: the
/// little-endian float32 bytes of each vector. Anything but a successful JSON list passes as is.
pub async fn encode_embeddings(
    endpoint: &Endpoint,
    response: HttpResponse,
) -> Result<HttpResponse, ApiError> {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !response.status().is_success() || !json {
        return Ok(response);
    }
    let (response, answer) = response.into_parts();
    let bytes = match body::to_bytes_limited(answer, MAX_EMBEDDINGS_ANSWER).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            return Err(ApiError::UpstreamUnreachable {
                provider: endpoint.provider.to_string(),
                cause: format!("the embeddings answer failed mid-way: {error}"),
            })
        }
        Err(_) => {
            return Err(ApiError::UpstreamUnreachable {
                provider: endpoint.provider.to_string(),
                cause: format!(
                    "the embeddings answer is over {MAX_EMBEDDINGS_ANSWER} bytes, too large to encode as base64"
                ),
            })
        }
    };
    let encoded = base64_embeddings(&bytes).unwrap_or(bytes);
    Ok(response.set_body(encoded).map_into_boxed_body())
}

/// The answer with every `data[i].embedding` float array replaced by its base64 string.
fn base64_embeddings(answer: &Bytes) -> Option<Bytes> {
    let top = members(answer, 0..answer.len()).ok()?;
    let data = find(&top, "data")?;
    let items: Vec<&RawValue> = serde_json::from_slice(&answer[data.value.clone()]).ok()?;
    let mut edits = Vec::with_capacity(items.len());
    for item in items {
        let span = span_of(answer, item.get())?;
        let fields = members(answer, span).ok()?;
        let embedding = find(&fields, "embedding")?;
        let vector: Vec<f32> = serde_json::from_slice(&answer[embedding.value.clone()]).ok()?;
        let mut little_endian = Vec::with_capacity(vector.len() * 4);
        for number in vector {
            little_endian.extend_from_slice(&number.to_le_bytes());
        }
        let text = base64::engine::general_purpose::STANDARD.encode(little_endian);
        edits.push((embedding.value.clone(), format!("\"{text}\"")));
    }
    Some(apply(answer, edits))
}

/// The body without the top-level members named in `names`. Kept members keep the separator
/// that preceded them, so their bytes and the layout around them do not change.
fn drop_members(body: &Bytes, names: &[Box<str>]) -> Result<Bytes, ApiError> {
    let all = members(body, 0..body.len())?;
    if !all.iter().any(|m| names.iter().any(|n| **n == m.key)) {
        return Ok(body.clone());
    }
    let (Some(first), Some(last)) = (all.first(), all.last()) else {
        return Ok(body.clone());
    };
    let mut out = BytesMut::with_capacity(body.len());
    out.extend_from_slice(&body[..first.span.start]);
    let mut wrote_one = false;
    for (index, member) in all.iter().enumerate() {
        if names.iter().any(|n| **n == member.key) {
            continue;
        }
        if wrote_one {
            let before = all[index - 1].span.end;
            out.extend_from_slice(&body[before..member.span.start]);
        }
        out.extend_from_slice(&body[member.span.clone()]);
        wrote_one = true;
    }
    out.extend_from_slice(&body[last.span.end..]);
    Ok(out.freeze())
}

#[derive(Deserialize)]
struct FormatProbe<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    json_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageProbe<'a> {
    #[serde(default)]
    role: Option<&'a str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

const JSON_OBJECT: &str = r#"{"type":"json_object"}"#;

/// Chat completions: `response_format` json_schema -> json_object, and the schema in the first
/// system message (appended to its text) or in a new one at the start of `messages`.
fn chat_json_object_fallback(body: &Bytes) -> Result<Bytes, ApiError> {
    let top = members(body, 0..body.len())?;
    let Some(format) = find(&top, "response_format") else {
        return Ok(body.clone());
    };
    let Ok(probe) = serde_json::from_slice::<FormatProbe<'_>>(&body[format.value.clone()]) else {
        return Ok(body.clone());
    };
    let Some(json_schema) = probe
        .json_schema
        .filter(|_| probe.kind == Some("json_schema"))
    else {
        return Ok(body.clone());
    };
    let Ok(inner) = serde_json::from_str::<FormatProbe<'_>>(json_schema.get()) else {
        return Ok(body.clone());
    };
    let instruction = instruction(inner.name, inner.schema);
    let mut edits = vec![(format.value.clone(), JSON_OBJECT.to_owned())];
    // `messages` that is not an array is left for the upstream to refuse.
    let messages = find(&top, "messages").and_then(|messages| {
        let list: Vec<&RawValue> = serde_json::from_slice(&body[messages.value.clone()]).ok()?;
        Some((messages, list))
    });
    if let Some((messages, list)) = messages {
        let system = list.iter().find_map(|message| {
            let probe: MessageProbe<'_> = serde_json::from_str(message.get()).ok()?;
            (probe.role == Some("system"))
                .then_some(probe.content)
                .flatten()
        });
        match system {
            Some(content) => edits.push(extend_content(body, content, &instruction)?),
            None => {
                let separator = if list.is_empty() { "" } else { "," };
                let at = messages.value.start + 1;
                edits.push((
                    at..at,
                    format!(
                        r#"{{"role":"system","content":{}}}{separator}"#,
                        json_string(&instruction)
                    ),
                ));
            }
        }
    }
    Ok(apply(body, edits))
}

/// The Responses API: `text.format` json_schema -> json_object, and the schema in `instructions`
/// (appended, or a new `instructions` member first in the body).
fn responses_json_object_fallback(body: &Bytes) -> Result<Bytes, ApiError> {
    let top = members(body, 0..body.len())?;
    let Some(text) = find(&top, "text") else {
        return Ok(body.clone());
    };
    if body.get(text.value.start) != Some(&b'{') {
        return Ok(body.clone());
    }
    let text_members = members(body, text.value.clone())?;
    let Some(format) = find(&text_members, "format") else {
        return Ok(body.clone());
    };
    let Ok(probe) = serde_json::from_slice::<FormatProbe<'_>>(&body[format.value.clone()]) else {
        return Ok(body.clone());
    };
    if probe.kind != Some("json_schema") {
        return Ok(body.clone());
    }
    let instruction = instruction(probe.name, probe.schema);
    let mut edits = vec![(format.value.clone(), JSON_OBJECT.to_owned())];
    match find(&top, "instructions") {
        Some(existing) if body.get(existing.value.start) == Some(&b'"') => {
            let raw = std::str::from_utf8(&body[existing.value.clone()])
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            edits.push(append_to_string(existing.value.clone(), raw, &instruction));
        }
        Some(existing) => edits.push((existing.value.clone(), json_string(&instruction))),
        None => {
            let at = top.first().map_or(0, |first| first.span.start);
            edits.push((
                at..at,
                format!("\"instructions\":{},", json_string(&instruction)),
            ));
        }
    }
    Ok(apply(body, edits))
}

/// Appends the instruction to a message's content: to its text, or as a last text part.
fn extend_content(
    body: &[u8],
    content: &RawValue,
    instruction: &str,
) -> Result<(Range<usize>, String), ApiError> {
    let span = span_of(body, content.get())
        .ok_or_else(|| ApiError::Internal("content outside the body".into()))?;
    let raw = content.get();
    if raw.starts_with('"') {
        return Ok(append_to_string(span, raw, instruction));
    }
    let part = format!(r#"{{"type":"text","text":{}}}"#, json_string(instruction));
    if raw.starts_with('[') {
        let parts: Vec<&RawValue> =
            serde_json::from_str(raw).map_err(|source| ApiError::InvalidJson { source })?;
        let at = span.end - 1;
        let separator = if parts.is_empty() { "" } else { "," };
        return Ok((at..at, format!("{separator}{part}")));
    }
    // null or anything else: the instruction becomes the content.
    Ok((span, json_string(instruction)))
}

/// Inserts "\n\n" + instruction before the closing quote of a JSON string.
fn append_to_string(span: Range<usize>, raw: &str, instruction: &str) -> (Range<usize>, String) {
    let escaped = json_string(&format!("\n\n{instruction}"));
    let at = span.start + raw.len() - 1;
    (at..at, escaped[1..escaped.len() - 1].to_owned())
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The system text that makes json_object mode follow the schema the client wanted.
fn instruction(name: Option<&RawValue>, schema: Option<&RawValue>) -> String {
    let schema = schema.map_or_else(|| "{}".to_owned(), |s| minify(s.get()));
    let name = name
        .and_then(|n| serde_json::from_str::<String>(n.get()).ok())
        .map(|n| format!(" (\"{n}\")"))
        .unwrap_or_default();
    format!("Answer with a single JSON object that follows this JSON Schema{name}:\n{schema}")
}

/// JSON text without the whitespace between tokens; strings and key order untouched.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// An object's members as (key, raw value) in order, duplicates kept.
#[cfg(test)]
mod tests {
    use super::*;

    fn drop(body: &str, names: &[&str]) -> String {
        let names: Vec<Box<str>> = names.iter().map(|n| Box::from(*n)).collect();
        let out = drop_members(&Bytes::from(body.to_owned()), &names).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn dropped_members_leave_the_rest_byte_identical() {
        for (body, names, expected) in [
            (
                r#"{"model":"m","logprobs":true}"#,
                &["logprobs"][..],
                r#"{"model":"m"}"#,
            ),
            (
                r#"{"logprobs":true, "model":"m"}"#,
                &["logprobs"],
                r#"{"model":"m"}"#,
            ),
            (
                "{ \"a\": 1,\n \"b\": [1, 2],\n \"c\": {\"b\": 3} }",
                &["b"],
                "{ \"a\": 1,\n \"c\": {\"b\": 3} }",
            ),
            (r#"{"a":1,"b":2,"c":3}"#, &["b", "c"], r#"{"a":1}"#),
            (r#"{"a":1,"b":2,"c":3}"#, &["a", "b"], r#"{"c":3}"#),
            (r#"{"a":1,"b":2}"#, &["a", "b"], r#"{}"#),
            (r#"{"a":1,"b":2}"#, &["z"], r#"{"a":1,"b":2}"#),
            (r#"{"a\"":1,"b":"x,\"y"}"#, &["a\""], r#"{"b":"x,\"y"}"#),
        ] {
            assert_eq!(drop(body, names), expected, "{body}");
        }
    }

    #[test]
    fn schemas_are_minified_outside_strings_only() {
        assert_eq!(
            minify("{ \"a b\" : [1, 2],\n \"c\": \"x \\\" y\" }"),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
        );
    }

    fn fallback(body: &str, chat: bool) -> String {
        let body = Bytes::from(body.to_owned());
        let out = match chat {
            true => chat_json_object_fallback(&body),
            false => responses_json_object_fallback(&body),
        };
        String::from_utf8(out.unwrap().to_vec()).unwrap()
    }

    const SCHEMA: &str = r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#;

    #[test]
    fn chat_json_schema_falls_back_to_json_object_with_the_schema_in_the_system_message() {
        let format = format!(
            r#"{{"type":"json_schema","json_schema":{{"name":"count","schema":{SCHEMA},"strict":true}}}}"#
        );
        let text = json_string;
        let said = instruction(
            Some(&RawValue::from_string("\"count\"".into()).unwrap()),
            Some(&RawValue::from_string(SCHEMA.into()).unwrap()),
        );
        // No system message: one is added first.
        let out = fallback(
            &format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"response_format":{format}}}"#
            ),
            true,
        );
        assert_eq!(
            out,
            format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":{}}},{{"role":"user","content":"hi"}}],"response_format":{JSON_OBJECT}}}"#,
                text(&said)
            )
        );
        // A system message with text: extended.
        let out = fallback(
            &format!(
                r#"{{"messages":[{{"role":"system","content":"Be brief."}}],"response_format":{format}}}"#
            ),
            true,
        );
        let extended = text(&format!("Be brief.\n\n{said}"));
        assert_eq!(
            out,
            format!(
                r#"{{"messages":[{{"role":"system","content":{extended}}}],"response_format":{JSON_OBJECT}}}"#
            )
        );
        // Parts: one more text part.
        let out = fallback(
            &format!(
                r#"{{"messages":[{{"role":"system","content":[{{"type":"text","text":"A"}}]}}],"response_format":{format}}}"#
            ),
            true,
        );
        assert!(
            out.contains(&format!(
                r#"[{{"type":"text","text":"A"}},{{"type":"text","text":{}}}]"#,
                text(&said)
            )),
            "{out}"
        );
        // Other formats are untouched.
        let plain = r#"{"messages":[],"response_format":{"type":"json_object"}}"#;
        assert_eq!(fallback(plain, true), plain);
    }

    #[test]
    fn responses_text_format_falls_back_with_the_schema_in_instructions() {
        let format =
            format!(r#"{{"type":"json_schema","name":"count","schema":{SCHEMA},"strict":true}}"#);
        let said = instruction(
            Some(&RawValue::from_string("\"count\"".into()).unwrap()),
            Some(&RawValue::from_string(SCHEMA.into()).unwrap()),
        );
        let out = fallback(
            &format!(
                r#"{{"model":"m","input":"hi","text":{{"format":{format},"verbosity":"low"}}}}"#
            ),
            false,
        );
        assert_eq!(
            out,
            format!(
                r#"{{"instructions":{},"model":"m","input":"hi","text":{{"format":{JSON_OBJECT},"verbosity":"low"}}}}"#,
                json_string(&said)
            )
        );
        let out = fallback(
            &format!(r#"{{"model":"m","instructions":"Be brief.","text":{{"format":{format}}}}}"#),
            false,
        );
        assert!(
            out.contains(&json_string(&format!("Be brief.\n\n{said}"))),
            "{out}"
        );
    }

    #[test]
    fn float_embeddings_become_little_endian_f32_base64() {
        let answer = Bytes::from_static(
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25, -0.5,1.0]}],"model":"m"}"#,
        );
        let out = base64_embeddings(&answer).unwrap();
        // struct.pack('<3f', 0.25, -0.5, 1.0) in base64.
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPgAAAL8AAIA/"}],"model":"m"}"#
        );
    }

    #[test]
    fn b64_endpoints_ask_for_b64_json_keeping_the_other_keys_in_order() {
        let body =
            Bytes::from_static(br#"{"model":"t","prompt":"a cat","response_format":"url","n":2}"#);
        let (asked, out) = ask_for_b64_json(&body, UpstreamImageFormat::B64Json).unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"t","prompt":"a cat","response_format":"b64_json","n":2}"#
        );
        assert_eq!(asked.as_deref(), Some("url"));
        let body = Bytes::from_static(br#"{"model":"t", "prompt":"x"}"#);
        let (asked, out) = ask_for_b64_json(&body, UpstreamImageFormat::AsRequested).unwrap();
        assert_eq!(out, body);
        assert_eq!(asked, None);
        // Issue 12: spliced like every other rewrite, the client's bytes stay as sent.
        let body = Bytes::from_static(br#"{ "model" : "t", "n": 1.50 }"#);
        let (_, out) = ask_for_b64_json(&body, UpstreamImageFormat::B64Json).unwrap();
        assert_eq!(
            &out[..],
            br#"{ "response_format":"b64_json","model" : "t", "n": 1.50 }"#
        );
    }
}
