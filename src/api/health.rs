//! Liveness (GET /health, never touches an upstream), readiness (GET /ready) and per-model health
//! (GET /health/{model}).
use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::access::admin::AdminGate;
use crate::errors::ApiError;
use crate::health::{check_model, EndpointStatus, ModelStatus};
use crate::shared::SharedState;
use crate::state::AppState;
use crate::upstream::UpstreamClients;

/// Always 200 while the process serves; with `--redis-url` it also says whether Redis answers
/// (`"redis": "up"` or `"down"`): Redis is never a reason to restart or take traffic away.
pub async fn liveness(shared: web::Data<SharedState>) -> HttpResponse {
    match &shared.redis {
        Some(redis) => {
            HttpResponse::Ok().json(json!({"status": "ok", "redis": redis.health().state()}))
        }
        None => HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"status":"ok"}"#),
    }
}

/// 200 once the config is loaded with at least one route; 503 with a reason otherwise, and from
/// the first shutdown signal on, so load balancers stop sending new requests.
pub async fn readiness(state: web::Data<AppState>) -> HttpResponse {
    if state.shutting_down.load(Ordering::Acquire) {
        return not_ready("shutting down");
    }
    match state.table.route_count() {
        0 => not_ready("no routes loaded: the config dir has no valid provider file with models"),
        routes => HttpResponse::Ok().json(json!({"status": "ready", "routes": routes})),
    }
}

fn not_ready(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reason": reason}))
}

/// Probes the model's endpoints: 200 ok or degraded, 503 when none is up, 404 for an unknown model.
/// It lists endpoints: with access control on, like the status page, only for the admin.
pub async fn model(
    request: HttpRequest,
    model: web::Path<String>,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
    gate: web::Data<AdminGate>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, ApiError> {
    crate::api::status::admitted(&request, &state, &gate, &client).await?;
    let model = model.into_inner();
    let routes = state
        .table
        .lookup(&model)
        .ok_or(ApiError::UnknownModel { model })?;
    let health = check_model(&state.health, &clients, &routes).await;
    // Probed endpoints, in the order check_model reports them, feed llmux_endpoint_up.
    let endpoints = routes.routes.iter().flat_map(|route| route.pool.members());
    for (endpoint, checked) in endpoints.zip(&health.endpoints) {
        match checked.status {
            EndpointStatus::Up => state.metrics.set_endpoint_up(endpoint, true),
            EndpointStatus::Down => state.metrics.set_endpoint_up(endpoint, false),
            EndpointStatus::Unchecked => {}
        }
    }
    Ok(match health.status {
        ModelStatus::Ok | ModelStatus::Degraded => HttpResponse::Ok().json(health),
        ModelStatus::Error => HttpResponse::ServiceUnavailable().json(health),
    })
}
