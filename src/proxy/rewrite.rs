//! Request body rewrites an endpoint asks for, beyond the model (`proxy::body`): `drop_params`,
//! the json_schema -> json_object fallback, and float embeddings upstream encoded as base64 for
//! the client. Every rewrite splices bytes at the spans of the members it changes, so the rest of
//! the body reaches the upstream byte for byte as the client sent it.
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use actix_web::body::{self, BoxBody};
use actix_web::http::header;
use actix_web::HttpResponse;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::splice;
use super::capture::{AnswerKind, CaptureResponseId};
use crate::errors::ApiError;
use crate::routing::endpoint::Endpoint;
use crate::shared::owners::IdOwners;

/// The largest upstream embeddings answer read whole to encode it as base64.
pub const MAX_EMBEDDINGS_ANSWER: usize = 256 * 1024 * 1024;

/// What the answer to a rewritten request needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerRewrite {
    /// The client asked for base64 embeddings, the upstream was asked for float.
    pub base64_embeddings: bool,
    /// A Responses API request: remember which endpoint created the response.
    pub capture_response_id: bool,
}

/// Rewrites a request body for `endpoint`: the model (unless `model_field: false`), then
/// `drop_params`, `response_format_fallback` and `upstream_embedding_format`.
pub fn request(
    endpoint: &Endpoint,
    path: &str,
    body: &Bytes,
    model_span: Range<usize>,
) -> Result<(Bytes, AnswerRewrite), ApiError> {
    let mut answer = AnswerRewrite {
        capture_response_id: path == "v1/responses",
        ..AnswerRewrite::default()
    };
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
    Ok((body, answer))
}

/// Whether a multipart field is removed by the endpoint's `drop_params`.
pub fn dropped(endpoint: &Endpoint, field_name: &str) -> bool {
    endpoint
        .drop_params
        .iter()
        .any(|name| &**name == field_name)
}

/// Applies what `request` said the answer needs to the upstream's answer.
pub async fn answer(
    rewrite: AnswerRewrite,
    endpoint: &Arc<Endpoint>,
    owners: &Arc<dyn IdOwners>,
    response: Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let mut response = response?;
    if rewrite.base64_embeddings {
        response = encode_embeddings(endpoint, response).await?;
    }
    if rewrite.capture_response_id && response.status().is_success() {
        let content_type = response.headers().get(header::CONTENT_TYPE);
        let kind = match content_type.map(|v| v.as_bytes()) {
            Some(v) if v.starts_with(b"text/event-stream") => Some(AnswerKind::EventStream),
            Some(v) if v.starts_with(b"application/json") => Some(AnswerKind::Json),
            _ => None,
        };
        if let Some(kind) = kind {
            let (owners, endpoint) = (Arc::clone(owners), Arc::clone(endpoint));
            response = response.map_body(move |_, body| {
                BoxBody::new(CaptureResponseId::new(body, kind, owners, endpoint))
            });
        }
    }
    Ok(response)
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

/// One member of a JSON object: its key and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    key: String,
    /// From the key's opening quote to the value's last byte.
    span: Range<usize>,
    value: Range<usize>,
}

/// The members of the object at `object` (a span of `body`), in order.
fn members(body: &[u8], object: Range<usize>) -> Result<Vec<Member>, ApiError> {
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

fn find<'m>(members: &'m [Member], key: &str) -> Option<&'m Member> {
    members.iter().find(|m| m.key == key)
}

/// Where `part`, a slice borrowed from `body`, sits in it.
fn span_of(body: &[u8], part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start + part.len();
    (body.get(span.clone()) == Some(part.as_bytes())).then_some(span)
}

/// `body` with each span replaced; spans do not overlap.
fn apply(body: &Bytes, mut edits: Vec<(Range<usize>, String)>) -> Bytes {
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
}
