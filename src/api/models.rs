//! GET /v1/models and /v1/models/{model}, in OpenAI's list shape.
use actix_web::{web, HttpResponse};
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

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let models = state.table.models();
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data: models.iter().map(|m| model_object(m)).collect(),
    })
}

pub async fn retrieve(
    state: web::Data<AppState>,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let model = model.into_inner();
    let routes = state
        .table
        .lookup(&model)
        .ok_or(ApiError::UnknownModel { model })?;
    Ok(HttpResponse::Ok().json(model_object(&routes)))
}
