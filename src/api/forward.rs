//! The JSON endpoints: read the body, route on its `model`, rewrite it, forward.
use std::sync::Arc;

use actix_web::http::header;
use actix_web::http::Uri;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::api::responses;
use crate::errors::ApiError;
use crate::proxy::body::find_model;
use crate::proxy::log::AccessLog;
use crate::proxy::retry::{forward_with_retries, upstream_uri, Outbound};
use crate::proxy::rewrite;
use crate::proxy::usage;
use crate::routing::endpoint::Endpoint;
use crate::routing::table::{ModelRoutes, RoutingTable};
use crate::state::AppState;

pub async fn json(
    path: &'static str,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, "POST", path, &state.metrics);
    let prepared = prepare(path, &request, payload, &state, &mut log).await;
    match prepared {
        Ok(outbound) => {
            forward_with_retries(
                &client,
                &request,
                outbound,
                &state.retry,
                &state.responses,
                log,
            )
            .await
        }
        Err(error) => {
            log.status = Some(error.status_code().as_u16());
            log.outcome = "rejected";
            error.error_response()
        }
    }
}

pub(crate) async fn prepare(
    path: &'static str,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    log: &mut AccessLog,
) -> Result<Outbound, ApiError> {
    let body = read_body(request, payload, state.max_body_bytes).await?;
    // Asking a stream for its usage may insert bytes: the model is found in the body as sent.
    let body = usage::read_usage_of(path, body, log);
    let field = find_model(&body)?;
    log.model = Some(field.model.as_ref().into());
    let (routes, route_path, upstream_path) = route(&state.table, &field.model, path)?;
    // A request continuing a stored response must reach the member that created it.
    let sticky = responses::creator_in_pool(state, &field.model, path, &body)
        .await
        .map(|(member, _)| member);
    let model_span = field.span;
    Ok(Outbound {
        routes,
        path,
        route_path,
        upstream_path,
        body,
        model_span,
        sticky,
    })
}

/// The model's routes, the route (pool) that serves `path`, and the upstream path when it is
/// not that route's own.
fn route(
    table: &RoutingTable,
    model: &str,
    path: &'static str,
) -> Result<(Arc<ModelRoutes>, &'static str, Option<&'static str>), ApiError> {
    let routes = table.lookup(model).ok_or_else(|| ApiError::UnknownModel {
        model: model.to_owned(),
    })?;
    if routes.pool(path).is_some() {
        return Ok((routes, path, None));
    }
    // Counting input tokens belongs to the Responses API: a model that serves v1/responses
    // serves it on the same upstream unless the config routes it elsewhere.
    if let Some(parent) = path.strip_suffix("/input_tokens") {
        if routes.pool(parent).is_some() {
            return Ok((routes, parent, Some(path)));
        }
    }
    Err(ApiError::ModelNotOnPath {
        model: model.to_owned(),
        path: path.to_owned(),
        served: routes.served_paths(),
    })
}

/// One endpoint for (model, path), chosen by its pool, for the handlers that do not retry:
/// uploads stream their body upstream once, image generations rework their answer.
pub(crate) fn route_once(
    table: &RoutingTable,
    model: &str,
    path: &'static str,
) -> Result<(Arc<Endpoint>, Uri), ApiError> {
    let (routes, route_path, upstream_path) = route(table, model, path)?;
    let pool = routes
        .pool(route_path)
        .ok_or_else(|| ApiError::Internal(format!("no pool for /{route_path}")))?;
    let endpoint = Arc::clone(&pool.members()[pool.select(None)]);
    let uri = upstream_uri(&endpoint, upstream_path)?;
    Ok((endpoint, uri))
}

/// Reads, routes and rewrites a JSON request for one endpoint (see `route_once`).
pub(crate) async fn prepare_once(
    path: &'static str,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    log: &mut AccessLog,
) -> Result<(Arc<Endpoint>, Uri, Bytes), ApiError> {
    let body = read_body(request, payload, state.max_body_bytes).await?;
    let field = find_model(&body)?;
    log.model = Some(field.model.as_ref().into());
    let (endpoint, uri) = route_once(&state.table, &field.model, path)?;
    log.endpoint = Some(Arc::clone(&endpoint));
    let (body, _answer) = rewrite::request(&endpoint, path, &body, field.span)?;
    Ok((endpoint, uri, body))
}

/// Reads the whole body, refusing anything over `limit` bytes before reading it when the client
/// announced its length.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(announced.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadPayload(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
