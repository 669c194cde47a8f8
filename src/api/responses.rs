//! The Responses API calls that name a response id instead of a model (retrieve, delete, cancel,
//! input items) go to the endpoint that created the response; `previous_response_id` keeps a
//! conversation on it.
use std::borrow::Cow;
use std::sync::Arc;

use actix_web::http::{Method, Uri};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use serde::Deserialize;

use crate::errors::ApiError;
use crate::proxy::forward::forward;
use crate::proxy::log::AccessLog;
use crate::routing::endpoint::Endpoint;
use crate::routing::responses::same_upstream;
use crate::shared::owners::IdFamily;
use crate::state::AppState;

/// GET /v1/responses/{id}.
pub async fn retrieve(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    by_id(RESPONSE, request, state, client).await
}

/// DELETE /v1/responses/{id}: the id is forgotten once the upstream deleted it.
pub async fn delete(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    by_id(RESPONSE, request, state, client).await
}

/// POST /v1/responses/{id}/cancel.
pub async fn cancel(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    by_id(CANCEL, request, state, client).await
}

/// GET /v1/responses/{id}/input_items.
pub async fn input_items(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    by_id(INPUT_ITEMS, request, state, client).await
}

/// What follows the id in the URL, and the route's name in the access log.
#[derive(Debug, Clone, Copy)]
struct ByIdRoute {
    suffix: &'static str,
    log_path: &'static str,
}

const RESPONSE: ByIdRoute = ByIdRoute {
    suffix: "",
    log_path: "v1/responses/{id}",
};
const CANCEL: ByIdRoute = ByIdRoute {
    suffix: "/cancel",
    log_path: "v1/responses/{id}/cancel",
};
const INPUT_ITEMS: ByIdRoute = ByIdRoute {
    suffix: "/input_items",
    log_path: "v1/responses/{id}/input_items",
};

/// Forwards a call on response `{id}` (no body: none of them takes one) to its creator.
async fn by_id(
    route: ByIdRoute,
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::DELETE => "DELETE",
        _ => "POST",
    };
    let mut log = AccessLog::of_request(&request, method, route.log_path, &state.metrics);
    let id = request
        .match_info()
        .get("id")
        .unwrap_or_default()
        .to_owned();
    let prepared = state
        .responses
        .owner(IdFamily::Responses, &id, &state.table)
        .await
        .ok_or_else(|| ApiError::UnknownResponse { id: id.clone() })
        .and_then(|endpoint| {
            let uri = endpoint
                .uri_with_query(
                    &format!("v1/responses/{id}{}", route.suffix),
                    request.uri().query(),
                )
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((endpoint, uri))
        });
    let result = match prepared {
        Ok((endpoint, uri)) => {
            log.model = Some(endpoint.exposed_model.as_ref().into());
            log.endpoint = Some(Arc::clone(&endpoint));
            let response = forward(&client, &request, &endpoint, uri, Bytes::new(), log).await;
            let deleted = request.method() == Method::DELETE
                && route.suffix.is_empty()
                && response.as_ref().is_ok_and(|r| r.status().is_success());
            if deleted {
                state.responses.forget(IdFamily::Responses, &id).await;
            }
            response
        }
        Err(error) => {
            log.status = Some(error.status_code().as_u16());
            log.outcome = "rejected";
            Err(error)
        }
    };
    result.unwrap_or_else(|error| error.error_response())
}

#[derive(Deserialize)]
struct PreviousProbe<'a> {
    #[serde(borrow, default)]
    previous_response_id: Option<Cow<'a, str>>,
}

/// For a Responses API request continuing `previous_response_id`: the member of the model's pool
/// on the upstream that created that response, with its upstream URI. `None` when the id is
/// unknown or its creator is not in the pool; the pool's own pick applies then.
pub async fn creator_in_pool(
    state: &AppState,
    model: &str,
    path: &str,
    body: &[u8],
) -> Option<(Arc<Endpoint>, Uri)> {
    if path != "v1/responses" && path != "v1/responses/input_tokens" {
        return None;
    }
    let probe: PreviousProbe<'_> = serde_json::from_slice(body).ok()?;
    let previous = probe.previous_response_id?;
    let creator = state
        .responses
        .owner(IdFamily::Responses, &previous, &state.table)
        .await?;
    let routes = state.table.lookup(model)?;
    let (pool, own_path) = match routes.pool(path) {
        Some(pool) => (pool, true),
        None => (routes.pool("v1/responses")?, false),
    };
    let member = pool
        .members()
        .iter()
        .find(|member| same_upstream(member, &creator))?;
    let uri = match own_path {
        true => member.upstream_uri.clone(),
        false => member.uri_for(path).ok()?,
    };
    Some((Arc::clone(member), uri))
}
