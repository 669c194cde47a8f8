//! The demo's text endpoints: chat completions, completions and responses (plain, or streamed as
//! server-sent events paced by `tokens_per_second` after `time_to_first_token_ms`), responses kept
//! for retrieval by id, and moderations.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

use super::settings::DemoSettings;
use super::{
    error, estimate_tokens, invalid_request, json_body, model_of, new_id, unix_now, Settings,
};

/// What every demo text model answers: fixed, so tests and dashboards see the same thing each time.
pub const REPLY: &str = "Hello! This is the demo model built into llmux. It answers every request \
with this same text, paced like a real model, so clients, streaming, retries and dashboards can be \
tried without any backend. Point a provider at a real server to get real answers.";

/// How many created responses are kept for `GET /v1/responses/{id}`; the oldest go first.
const KEPT_RESPONSES: usize = 1000;

/// Responses the demo created, for retrieval by id.
#[derive(Default)]
pub struct StoredResponses {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_id: HashMap<String, Value>,
    order: VecDeque<String>,
}

impl StoredResponses {
    fn insert(&self, id: String, response: Value) {
        let mut kept = self.lock();
        if kept.by_id.insert(id.clone(), response).is_none() {
            kept.order.push_back(id);
        }
        while kept.order.len() > KEPT_RESPONSES {
            if let Some(oldest) = kept.order.pop_front() {
                kept.by_id.remove(&oldest);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Value> {
        self.lock().by_id.get(id).cloned()
    }

    fn remove(&self, id: &str) -> bool {
        let mut kept = self.lock();
        kept.order.retain(|kept_id| kept_id != id);
        kept.by_id.remove(id).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The reply cut in tokens (a word and the space before it), at most `limit` of them.
struct Generation {
    tokens: Vec<&'static str>,
    /// True when `limit` cut the reply short.
    truncated: bool,
}

impl Generation {
    fn new(limit: Option<u64>) -> Self {
        let mut tokens = Vec::new();
        let mut start = 0;
        for (index, character) in REPLY.char_indices() {
            if character == ' ' && index > start {
                tokens.push(&REPLY[start..index]);
                start = index;
            }
        }
        tokens.push(&REPLY[start..]);
        let limit = limit.map_or(usize::MAX, |l| {
            usize::try_from(l.max(1)).unwrap_or(usize::MAX)
        });
        let truncated = tokens.len() > limit;
        tokens.truncate(limit);
        Self { tokens, truncated }
    }

    fn text(&self) -> String {
        self.tokens.concat()
    }

    fn count(&self) -> u64 {
        self.tokens.len() as u64
    }

    fn finish_reason(&self) -> &'static str {
        if self.truncated {
            "length"
        } else {
            "stop"
        }
    }
}

/// When each generated token is due.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    first_token: Duration,
    between_tokens: Duration,
}

impl Pace {
    fn new(settings: &DemoSettings) -> Self {
        Self {
            start: Instant::now(),
            first_token: settings.time_to_first_token,
            between_tokens: settings
                .tokens_per_second
                .map_or(Duration::ZERO, |rate| Duration::from_secs_f64(1.0 / rate)),
        }
    }

    fn token_due(&self, index: usize) -> Instant {
        self.start + self.first_token + self.between_tokens * u32::try_from(index).unwrap_or(0)
    }

    /// Waits as long as generating `tokens` takes, for answers that are not streamed.
    async fn generate(&self, tokens: usize) {
        let due = self.token_due(tokens.saturating_sub(1));
        // A timer, even one already due, waits for the timer wheel's next millisecond tick.
        if due > Instant::now() {
            actix_web::rt::time::sleep_until(due.into()).await;
        }
    }
}

/// Sum of the lengths of every string in `value`: the text a prompt holds, roughly.
fn text_chars(value: &Value) -> usize {
    match value {
        Value::String(text) => text.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(members) => members.values().map(text_chars).sum(),
        _ => 0,
    }
}

fn limit_of(body: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|key| body.get(*key).and_then(Value::as_u64))
}

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

/// POST /v1/chat/completions.
pub async fn chat(settings: Settings, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let Some(messages) = body.get("messages").filter(|m| m.is_array()) else {
        return invalid_request("`messages` is required and must be an array");
    };
    let model = model_of(&body);
    let generation = Generation::new(limit_of(&body, &["max_completion_tokens", "max_tokens"]));
    let prompt_tokens = estimate_tokens(text_chars(messages));
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generation.count(),
        "total_tokens": prompt_tokens + generation.count(),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let pace = Pace::new(&settings.0);
    if !is_stream(&body) {
        pace.generate(generation.tokens.len()).await;
        return HttpResponse::Ok().json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_llmux_demo",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text(), "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": generation.finish_reason()
            }],
            "usage": usage,
            "service_tier": "default"
        }));
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_llmux_demo",
            "service_tier": "default",
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage;
        }
        chunk
    };
    let choice = |delta: Value, finish_reason: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
    let mut events = vec![(
        pace.token_due(0),
        chunk(
            choice(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ),
            Value::Null,
        ),
    )];
    for (index, token) in generation.tokens.iter().enumerate() {
        events.push((
            pace.token_due(index),
            chunk(choice(json!({"content": token}), Value::Null), Value::Null),
        ));
    }
    let end = pace.token_due(generation.tokens.len().saturating_sub(1));
    events.push((
        end,
        chunk(
            choice(json!({}), generation.finish_reason().into()),
            Value::Null,
        ),
    ));
    if include_usage {
        events.push((end, chunk(json!([]), usage)));
    }
    sse(data_events(events))
}

/// POST /v1/completions.
pub async fn completions(settings: Settings, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let Some(prompt) = body.get("prompt") else {
        return invalid_request("`prompt` is required");
    };
    let model = model_of(&body);
    let generation = Generation::new(limit_of(&body, &["max_tokens"]));
    let prompt_tokens = estimate_tokens(text_chars(prompt));
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generation.count(),
        "total_tokens": prompt_tokens + generation.count()
    });
    let id = new_id("cmpl-");
    let created = unix_now();
    let pace = Pace::new(&settings.0);
    let answer = |choices: Value, usage: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_llmux_demo",
            "choices": choices,
            "usage": usage
        })
    };
    let choice = |text: &str, finish_reason: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}]);
    if !is_stream(&body) {
        pace.generate(generation.tokens.len()).await;
        return HttpResponse::Ok().json(answer(
            choice(&generation.text(), generation.finish_reason().into()),
            usage,
        ));
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let mut events: Vec<(Instant, Value)> = Vec::new();
    let last = generation.tokens.len().saturating_sub(1);
    for (index, token) in generation.tokens.iter().enumerate() {
        let finish_reason = if index == last {
            generation.finish_reason().into()
        } else {
            Value::Null
        };
        events.push((
            pace.token_due(index),
            answer(choice(token, finish_reason), Value::Null),
        ));
    }
    if include_usage {
        events.push((pace.token_due(last), answer(json!([]), usage)));
    }
    sse(data_events(events))
}

/// POST /v1/responses: plain, or streamed as the Responses API's typed events. Stored responses
/// (all but `"store": false`) can be retrieved by id.
pub async fn responses(
    settings: Settings,
    body: Bytes,
    stored: web::Data<StoredResponses>,
) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let Some(input) = body.get("input") else {
        return invalid_request("`input` is required");
    };
    let model = model_of(&body);
    let generation = Generation::new(limit_of(&body, &["max_output_tokens"]));
    let input_tokens =
        estimate_tokens(text_chars(input) + body.get("instructions").map_or(0, text_chars));
    let id = new_id("resp_");
    let message_id = new_id("msg_");
    let store = body.get("store").and_then(Value::as_bool) != Some(false);
    let status = if generation.truncated {
        "incomplete"
    } else {
        "completed"
    };
    let text = generation.text();
    let message = |status: &str, content: Value| json!({"type": "message", "id": message_id, "status": status, "role": "assistant", "content": content});
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": unix_now(),
            "status": status,
            "error": null,
            "incomplete_details": if generation.truncated && status == "incomplete" {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "store": store,
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": usage,
            "metadata": {}
        })
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": generation.count(),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + generation.count()
    });
    let done = response(
        status,
        json!([message(status, json!([part(&text)]))]),
        usage,
    );
    if store {
        stored.insert(id.clone(), done.clone());
    }
    let pace = Pace::new(&settings.0);
    if !is_stream(&body) {
        pace.generate(generation.tokens.len()).await;
        return HttpResponse::Ok().json(done);
    }
    let started = Instant::now();
    let in_progress = response("in_progress", json!([]), Value::Null);
    let mut events: Vec<(Instant, &'static str, Value)> = vec![
        (
            started,
            "response.created",
            json!({"response": in_progress.clone()}),
        ),
        (
            started,
            "response.in_progress",
            json!({"response": in_progress}),
        ),
        (
            started,
            "response.output_item.added",
            json!({"output_index": 0, "item": message("in_progress", json!([]))}),
        ),
        (
            started,
            "response.content_part.added",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "part": part("")}),
        ),
    ];
    for (index, token) in generation.tokens.iter().enumerate() {
        events.push((
            pace.token_due(index),
            "response.output_text.delta",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "delta": token, "logprobs": []}),
        ));
    }
    let end = pace.token_due(generation.tokens.len().saturating_sub(1));
    let final_event = if generation.truncated {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.extend([
        (
            end,
            "response.output_text.done",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        ),
        (
            end,
            "response.content_part.done",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "part": part(&text)}),
        ),
        (
            end,
            "response.output_item.done",
            json!({"output_index": 0, "item": message(status, json!([part(&text)]))}),
        ),
        (end, final_event, json!({"response": done})),
    ]);
    let typed = events
        .into_iter()
        .enumerate()
        .map(|(sequence, (due, kind, mut event))| {
            event["type"] = kind.into();
            event["sequence_number"] = sequence.into();
            (
                due,
                Bytes::from(format!("event: {kind}\ndata: {event}\n\n")),
            )
        })
        .collect();
    sse(typed)
}

/// GET /v1/responses/{id}.
pub async fn retrieve_response(
    id: web::Path<String>,
    stored: web::Data<StoredResponses>,
) -> HttpResponse {
    match stored.get(&id) {
        Some(response) => HttpResponse::Ok().json(response),
        None => no_such_response(&id),
    }
}

/// DELETE /v1/responses/{id}.
pub async fn delete_response(
    id: web::Path<String>,
    stored: web::Data<StoredResponses>,
) -> HttpResponse {
    if stored.remove(&id) {
        HttpResponse::Ok().json(json!({"id": *id, "object": "response", "deleted": true}))
    } else {
        no_such_response(&id)
    }
}

fn no_such_response(id: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        &format!("No response with id '{id}' found."),
        "invalid_request_error",
        "not_found",
    )
}

/// The moderation categories, in OpenAI's order.
const CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// POST /v1/moderations: every input is harmless.
pub async fn moderations(settings: Settings, body: Bytes) -> HttpResponse {
    if let Some(fault) = settings.faults().await {
        return fault;
    }
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(message) => return invalid_request(&message),
    };
    let inputs = match body.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) if !items.is_empty() => {
            // An array of content parts (text and images) is one input.
            if items.iter().all(Value::is_string) {
                items.len()
            } else {
                1
            }
        }
        _ => return invalid_request("`input` is required: a string or an array"),
    };
    let categories: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .map(|name| ((*name).to_owned(), false.into()))
        .collect();
    let scores: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .map(|name| ((*name).to_owned(), json!(0.0001)))
        .collect();
    let applied: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .map(|name| ((*name).to_owned(), json!(["text"])))
        .collect();
    let result = json!({
        "flagged": false,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied
    });
    HttpResponse::Ok().json(json!({
        "id": new_id("modr-"),
        "model": model_of(&body),
        "results": vec![result; inputs]
    }))
}

/// `data: {json}` events, then `data: [DONE]`, as chat and completions stream.
fn data_events(events: Vec<(Instant, Value)>) -> Vec<(Instant, Bytes)> {
    let last = events.last().map_or_else(Instant::now, |(due, _)| *due);
    events
        .into_iter()
        .map(|(due, event)| (due, Bytes::from(format!("data: {event}\n\n"))))
        .chain([(last, Bytes::from_static(b"data: [DONE]\n\n"))])
        .collect()
}

/// A `text/event-stream` answer sending each event when it is due.
fn sse(events: Vec<(Instant, Bytes)>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(paced(events))
}

fn paced(
    events: Vec<(Instant, Bytes)>,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    stream::iter(events).then(|(due, event)| async move {
        if due > Instant::now() {
            actix_web::rt::time::sleep_until(due.into()).await;
        }
        Ok(event)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_cuts_into_tokens_that_join_back_and_honour_a_limit() {
        let whole = Generation::new(None);
        assert_eq!(whole.text(), REPLY);
        assert!(!whole.truncated);
        assert!(whole
            .tokens
            .iter()
            .skip(1)
            .all(|token| token.starts_with(' ')));
        let cut = Generation::new(Some(3));
        assert_eq!(cut.text(), "Hello! This is");
        assert_eq!(cut.finish_reason(), "length");
    }
}
