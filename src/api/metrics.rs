//! GET /metrics: every metric in OpenMetrics text, for Prometheus to scrape.
use actix_web::{web, HttpResponse};

use crate::errors::ApiError;
use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .render()
        .map_err(|error| ApiError::Internal(format!("rendering metrics: {error}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
