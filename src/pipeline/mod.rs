//! The request pipeline: every proxied request passes the same stages, in this order, each owned
//! by one module here:
//!
//! ```text
//! accept    startup.rs middleware: request id (+ a record for requests no stage records)
//! read      read.rs: bounded body: JSON whole, multipart up to `model` (proxy::multipart)
//! identify  identify.rs: ONE probe of the body: model (+ span), stream, stream_options,
//!           previous_response_id
//! admit     admit.rs: may this caller make this request (admits everything today)
//! route     route.rs: table -> pool (kept) -> sticky member; response ids
//! attempt   attempt.rs: rewrite for this member, send, classify, breaker, back off, retry
//! respond   attempt.rs::respond_with + proxy::forward::respond: header hygiene, the body stream
//!           with its taps (usage, response-id capture, image URLs, base64 embeddings)
//! record    record.rs: the context's drop writes the one log line and the metrics
//! ```
//!
//! Handlers (`api/`) only extract what their URL carries and call a function of this module
//! with their `Operation`.
pub mod accept;
pub mod admit;
pub mod attempt;
pub mod family;
pub mod identify;
pub mod operation;
pub mod read;
pub mod record;
pub mod route;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use self::admit::AdmitRequest;
use self::attempt::{forward_with_retries, Outbound};
use self::identify::{identify, identify_session_model, model_of_query};
use self::operation::Operation;
use self::record::AccessLog;
use crate::errors::ApiError;
use crate::proxy::forward::forward;
use crate::proxy::usage::{ask_for_usage, UsageReader};
use crate::shared::owners::IdFamily;
use crate::state::AppState;
use crate::upstream::UpstreamClients;

/// A JSON operation: read, identify, admit, route, then the attempt loop answers.
pub async fn forward_json(
    operation: Operation,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    // Boxed: the record is large and moves from stage to stage into the answer's body stream
    // (issue 16: each move of it by value was a memcpy of about 2 KB).
    let mut log = AccessLog::boxed_of_request(&request, operation, &state.metrics);
    // Boxed too: the read and admit stages' state would otherwise sit in this future beside the
    // attempt loop's, and the whole future is moved into actix's box.
    match Box::pin(prepare(operation, &request, payload, &state, &mut log)).await {
        Ok(outbound) => forward_with_retries(&clients, &request, outbound, &state, log).await,
        Err(error) => log.reject(error),
    }
}

/// read -> identify -> admit -> route for a JSON body.
async fn prepare(
    operation: Operation,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    log: &mut AccessLog,
) -> Result<Outbound, ApiError> {
    read::refuse_upgrade(request, operation)?;
    let body = read::json_body(
        request,
        payload,
        state.max_body_bytes,
        state.client_body_timeout,
    )
    .await?;
    let identity = match operation {
        Operation::RealtimeClientSecrets => identify_session_model(&body)?,
        _ => identify(&body)?,
    };
    log.model = Some(identity.model.as_ref().into());
    // Without access control the admit stage admits everything at once; its future (1.5 KB)
    // is boxed for the requests it may refuse only, so this future stays small enough to box
    // cheaply (issue 16: 1.9 KB was an allocation past glibc's per-thread cache).
    if state.admitter.access().may_refuse() {
        Box::pin(state.admitter.admit(
            request,
            log,
            &AdmitRequest {
                operation,
                model: &identity.model,
                headers: request.headers(),
                body: &body,
            },
        ))
        .await?;
    }
    let routed = route::route(
        &state.table,
        &*state.responses,
        operation,
        &identity.model,
        identity.previous_response_id.as_deref(),
    )
    .await?;
    let mut model_span = identity.model_span.clone();
    // Reading a stream's usage may need llmux to ask for it: those bytes go in once, here,
    // before the model's span is used by any attempt.
    let asked = match operation.can_ask_for_usage() {
        true => ask_for_usage(&body, identity.stream, identity.stream_options.clone()),
        false => None,
    };
    let asked_for_usage = asked.is_some();
    let body: Bytes = match asked {
        Some((edited, at)) => {
            // The edit lies before or after the model, never across it: a model after it moves
            // by the change in length (added first, so nothing underflows when it shrinks).
            if at <= model_span.start {
                let moved = |offset: usize| offset + edited.len() - body.len();
                model_span = moved(model_span.start)..moved(model_span.end);
            }
            edited
        }
        None => body,
    };
    if operation.counts_tokens() {
        log.usage = Some(UsageReader::new(
            operation.path(),
            body.clone(),
            asked_for_usage,
        ));
    }
    Ok(Outbound {
        operation,
        routed,
        body,
        model_span,
    })
}

/// An operation whose body is forwarded unchanged and whose model is the `model` query parameter
/// (`POST /v1/realtime/calls?model=…`: SDP or multipart in, SDP out): read (bounded), identify
/// from the query, admit, route, one attempt with the target model in the query.
pub async fn forward_raw(
    operation: Operation,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, operation, &state.metrics);
    let prepared = async {
        let body = read::json_body(
            &request,
            payload,
            state.max_body_bytes,
            state.client_body_timeout,
        )
        .await?;
        let model = model_of_query(request.query_string())?;
        log.model = Some(model.as_str().into());
        state
            .admitter
            .admit(
                &request,
                &mut log,
                &AdmitRequest {
                    operation,
                    model: &model,
                    headers: request.headers(),
                    body: &[],
                },
            )
            .await?;
        let routed = route::route(&state.table, &*state.responses, operation, &model, None).await?;
        let pool = routed.pool();
        let endpoint = std::sync::Arc::clone(&pool.members()[pool.select()]);
        let query = with_target_model(request.query_string(), &endpoint.target_model_name);
        let uri = endpoint
            .uri_with_query(operation.path(), Some(&query))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok::<_, ApiError>((endpoint, uri, body))
    }
    .await;
    let (endpoint, uri, body) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return log.reject(error),
    };
    log.endpoint = Some(std::sync::Arc::clone(&endpoint));
    log.attempts = 1;
    let client = attempt::client_for(&clients, &endpoint);
    let mut response = forward(&client, &request, &endpoint, uri, body, log)
        .await
        .unwrap_or_else(|error| actix_web::ResponseError::error_response(&error));
    attempt::attempt_headers(&mut response, 1, &endpoint, state.upstream_header);
    response
}

/// The client's query with its `model` parameter naming `target` instead (other parameters kept).
fn with_target_model(query: &str, target: &str) -> String {
    let target: String = url_encode(target);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair == "model" || pair.starts_with("model=") {
            true => format!("model={target}"),
            false => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a query value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A call on a stored response `{id}` (no body: none of them takes one): route by the id to its
/// creator, admit for that model, one attempt (the response lives on that upstream only).
pub async fn forward_by_response_id(
    operation: Operation,
    request: HttpRequest,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, operation, &state.metrics);
    let id = request
        .match_info()
        .get("id")
        .unwrap_or_default()
        .to_owned();
    let suffix = match operation {
        Operation::ResponsesCancel => "/cancel",
        Operation::ResponsesInputItems => "/input_items",
        _ => "",
    };
    let prepared = async {
        let endpoint = route::by_response_id(&state.table, &*state.responses, &id).await?;
        log.model = Some(endpoint.exposed_model.as_ref().into());
        state
            .admitter
            .admit(
                &request,
                &mut log,
                &AdmitRequest {
                    operation,
                    model: &endpoint.exposed_model,
                    headers: request.headers(),
                    body: &[],
                },
            )
            .await?;
        let uri = endpoint
            .uri_with_query(&format!("v1/responses/{id}{suffix}"), request.uri().query())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok::<_, ApiError>((endpoint, uri))
    }
    .await;
    let (endpoint, uri) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return log.reject(error),
    };
    log.endpoint = Some(std::sync::Arc::clone(&endpoint));
    log.attempts = 1;
    if let Some(trace) = log.trace.as_mut() {
        trace.start_attempt(&endpoint, operation.path(), 1);
    }
    let client = attempt::client_for(&clients, &endpoint);
    let mut response = forward(&client, &request, &endpoint, uri, Bytes::new(), log)
        .await
        .unwrap_or_else(|error| actix_web::ResponseError::error_response(&error));
    if operation == Operation::ResponsesDelete && response.status().is_success() {
        state.responses.forget(IdFamily::Responses, &id).await;
    }
    attempt::attempt_headers(&mut response, 1, &endpoint, state.upstream_header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F: std::future::Future>(_: &impl Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Issue 16: every request's handler future is moved into actix's box, and the record (about
    /// 2 KB) moved by value from stage to stage; with the images answer's state inline the
    /// future was 16 KB, and copying it cost more instructions than all of llmux's own logic.
    #[test]
    #[expect(unreachable_code, reason = "the future is sized, never built")]
    fn the_json_pipeline_future_stays_small() {
        let size = future_size(&|| {
            forward_json(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        assert!(size <= 4096, "forward_json's future is {size} bytes");
    }

    /// Issue 16: `prepare`'s future is boxed for every JSON request; with the admit stage's
    /// future inline (1.5 KB, even when access control is off) it was 1.9 KB, past the largest
    /// size glibc's per-thread cache serves (1032 bytes), and its allocation and free cost
    /// about 2k instructions.
    #[test]
    #[expect(unreachable_code, reason = "the future is sized, never built")]
    fn the_prepare_future_fits_the_allocator_cache() {
        let size = future_size(&|| {
            prepare(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        assert!(size <= 1024, "prepare's future is {size} bytes");
    }
}
