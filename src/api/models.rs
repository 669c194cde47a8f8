//! GET /v1/models and /v1/models/{model}, in OpenAI's list shape.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::errors::ApiError;
use crate::pipeline::admit::Admitter;
use crate::routing::families::RESERVED_MODEL_PREFIX;
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
pub async fn list(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.admitter.caller(&request).await?;
    let models = state.table.models();
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list",
        data: models
            .iter()
            // Families' routes (`@files`) are not models.
            .filter(|m| !m.name.starts_with(RESERVED_MODEL_PREFIX))
            .filter(|m| Admitter::may_see(caller.as_ref(), &m.name))
            .map(|m| model_object(m))
            .collect(),
    }))
}

/// A model the caller may not use does not exist for it (no enumeration).
pub async fn retrieve(
    request: HttpRequest,
    state: web::Data<AppState>,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let model = model.into_inner();
    let caller = state.admitter.caller(&request).await?;
    let routes = state
        .table
        .lookup(&model)
        .filter(|_| !model.starts_with(RESERVED_MODEL_PREFIX))
        .filter(|_| Admitter::may_see(caller.as_ref(), &model))
        .ok_or(ApiError::UnknownModel { model })?;
    Ok(HttpResponse::Ok().json(model_object(&routes)))
}
