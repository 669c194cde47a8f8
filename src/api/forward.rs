//! The JSON endpoints: read the body, route on its `model`, rewrite it, forward.
use std::sync::Arc;

use actix_web::http::header;
use actix_web::http::Uri;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::errors::ApiError;
use crate::proxy::body::{find_model, splice};
use crate::proxy::forward::forward;
use crate::proxy::headers::{request_id, RequestId};
use crate::proxy::log::AccessLog;
use crate::proxy::usage;
use crate::routing::endpoint::Endpoint;
use crate::routing::table::RoutingTable;
use crate::state::AppState;

pub async fn json(
    path: &'static str,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| request_id(request.headers()), |id| id.0.clone());
    let mut log = AccessLog::start(request_id, "POST", path, request.peer_addr());
    log.record_in(Arc::clone(&state.metrics));
    let prepared = prepare(path, &request, payload, &state, &mut log).await;
    let result = match prepared {
        Ok((endpoint, uri, body)) => forward(&client, &request, &endpoint, uri, body, log).await,
        Err(error) => {
            log.status = Some(error.status_code().as_u16());
            log.outcome = "rejected";
            Err(error)
        }
    };
    result.unwrap_or_else(|error| error.error_response())
}

async fn prepare(
    path: &'static str,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    log: &mut AccessLog,
) -> Result<(Arc<Endpoint>, Uri, Bytes), ApiError> {
    let body = read_body(request, payload, state.max_body_bytes).await?;
    let field = find_model(&body)?;
    log.model = Some(field.model.as_ref().into());
    let (endpoint, uri) = route(&state.table, &field.model, path)?;
    log.endpoint = Some(Arc::clone(&endpoint));
    let body = splice(&body, field.span, &endpoint.target_model_json);
    let body = usage::read_usage_of(path, body, log);
    Ok((endpoint, uri, body))
}

/// The endpoint and upstream URI for (model, path).
fn route(table: &RoutingTable, model: &str, path: &str) -> Result<(Arc<Endpoint>, Uri), ApiError> {
    let routes = table.lookup(model).ok_or_else(|| ApiError::UnknownModel {
        model: model.to_owned(),
    })?;
    if let Some(pool) = routes.pool(path) {
        let endpoint = Arc::clone(pool.pick());
        let uri = endpoint.upstream_uri.clone();
        return Ok((endpoint, uri));
    }
    // Counting input tokens belongs to the Responses API: a model that serves v1/responses
    // serves it on the same upstream unless the config routes it elsewhere.
    if let Some(parent) = path.strip_suffix("/input_tokens") {
        if let Some(pool) = routes.pool(parent) {
            let endpoint = Arc::clone(pool.pick());
            let uri = endpoint
                .uri_for(path)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok((endpoint, uri));
        }
    }
    Err(ApiError::ModelNotOnPath {
        model: model.to_owned(),
        path: path.to_owned(),
        served: routes.served_paths(),
    })
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
