//! The Responses API calls that name a response id instead of a model (retrieve, delete, cancel,
//! input items): extract the id, the pipeline sends them to the endpoint that created it.
use actix_web::{web, HttpRequest, HttpResponse};

use crate::pipeline;
use crate::pipeline::operation::Operation;
use crate::state::AppState;

/// GET /v1/responses/{id}.
pub async fn retrieve(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    pipeline::forward_by_response_id(Operation::ResponsesRetrieve, request, state, client).await
}

/// DELETE /v1/responses/{id}: the id is forgotten once the upstream deleted it.
pub async fn delete(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    pipeline::forward_by_response_id(Operation::ResponsesDelete, request, state, client).await
}

/// POST /v1/responses/{id}/cancel.
pub async fn cancel(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    pipeline::forward_by_response_id(Operation::ResponsesCancel, request, state, client).await
}

/// GET /v1/responses/{id}/input_items.
pub async fn input_items(
    request: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    pipeline::forward_by_response_id(Operation::ResponsesInputItems, request, state, client).await
}
