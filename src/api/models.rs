//! GET /v1/models and /v1/models/{model}, in OpenAI's list shape.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::errors::ApiError;
use crate::routing::table::ModelRoutes;
use crate::state::AppState;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

fn model_object(routes: &ModelRoutes) -> ModelObject<'_> {
    ModelObject {
        id: &routes.name,
        object: "model",
        created: routes.created,
        owned_by: routes.owner(),
    }
}

/// The models the caller may use (the admit stage decides which).
pub async fn list(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let models = state.table.models();
    let headers = request.headers();
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data: models
            .iter()
            .filter(|m| state.admitter.may_see(headers, &m.name))
            .map(|m| model_object(m))
            .collect(),
    })
}

/// A model the caller may not use does not exist for it (no enumeration).
pub async fn retrieve(
    request: HttpRequest,
    state: web::Data<AppState>,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let model = model.into_inner();
    let routes = state
        .table
        .lookup(&model)
        .filter(|_| state.admitter.may_see(request.headers(), &model))
        .ok_or(ApiError::UnknownModel { model })?;
    Ok(HttpResponse::Ok().json(model_object(&routes)))
}
