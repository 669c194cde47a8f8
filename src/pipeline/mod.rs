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
pub mod identify;
pub mod operation;
pub mod read;
pub mod record;
pub mod route;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use self::admit::AdmitRequest;
use self::attempt::{forward_with_retries, Outbound};
use self::identify::identify;
use self::operation::Operation;
use self::record::AccessLog;
use crate::errors::ApiError;
use crate::proxy::forward::forward;
use crate::proxy::usage::{ask_for_usage, UsageReader};
use crate::state::AppState;

/// A JSON operation: read, identify, admit, route, then the attempt loop answers.
pub async fn forward_json(
    operation: Operation,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, operation, &state.metrics);
    match prepare(operation, &request, payload, &state, &mut log).await {
        Ok(outbound) => forward_with_retries(&client, &request, outbound, &state, log).await,
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
    let body = read::json_body(request, payload, state.max_body_bytes).await?;
    let identity = identify(&body)?;
    log.model = Some(identity.model.as_ref().into());
    log.admission = Some(state.admitter.admit(&AdmitRequest {
        operation,
        model: &identity.model,
        headers: request.headers(),
        body: &body,
    })?);
    let routed = route::route(
        &state.table,
        &state.responses,
        operation,
        &identity.model,
        identity.previous_response_id.as_deref(),
    )?;
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

/// A call on a stored response `{id}` (no body: none of them takes one): route by the id to its
/// creator, admit for that model, one attempt (the response lives on that upstream only).
pub async fn forward_by_response_id(
    operation: Operation,
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
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
    let prepared =
        route::by_response_id(&state.table, &state.responses, &id).and_then(|endpoint| {
            log.model = Some(endpoint.exposed_model.as_ref().into());
            log.admission = Some(state.admitter.admit(&AdmitRequest {
                operation,
                model: &endpoint.exposed_model,
                headers: request.headers(),
                body: &[],
            })?);
            let uri = endpoint
                .uri_with_query(&format!("v1/responses/{id}{suffix}"), request.uri().query())
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((endpoint, uri))
        });
    let (endpoint, uri) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return log.reject(error),
    };
    log.endpoint = Some(std::sync::Arc::clone(&endpoint));
    log.attempts = 1;
    let client = attempt::client_for(&client, &endpoint);
    let mut response = forward(client, &request, &endpoint, uri, Bytes::new(), log)
        .await
        .unwrap_or_else(|error| actix_web::ResponseError::error_response(&error));
    if operation == Operation::ResponsesDelete && response.status().is_success() {
        state.responses.forget(&id);
    }
    attempt::attempt_headers(&mut response, 1, &endpoint);
    response
}
