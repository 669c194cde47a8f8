//! GET /metrics: every metric in OpenMetrics text, for Prometheus to scrape.
use actix_web::{web, HttpResponse};

use crate::errors::ApiError;
use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Gauges owned by other parts, read when Prometheus asks.
    let failing = state
        .live
        .status()
        .files
        .iter()
        .filter(|f| f.failing_since.is_some())
        .count();
    state.metrics.set_config_errors(failing);
    state
        .metrics
        .set_image_cache_bytes(state.images.local().bytes());
    let text = state
        .metrics
        .render()
        .map_err(|error| ApiError::Internal(format!("rendering metrics: {error}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
