//! GET /metrics: every metric, in OpenMetrics text when the scraper asks for it, in the classic
//! Prometheus text format otherwise.
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::errors::ApiError;
use crate::metrics::Format;
use crate::state::AppState;

pub async fn scrape(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let format = Format::negotiate(
        request
            .headers()
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok()),
    );
    // Gauges owned by other parts, read when Prometheus asks.
    let failing = state
        .live
        .status()
        .files
        .iter()
        .filter(|f| f.failing_since.is_some())
        .count();
    state.metrics.set_config_errors(failing);
    state.metrics.set_image_cache_bytes(state.images.bytes());
    // Rendering a large table takes a while: on the blocking pool, not a request worker.
    let text = web::block(move || state.metrics.render_as(format))
        .await
        .map_err(|error| ApiError::Internal(format!("rendering metrics: {error}")))?
        .map_err(|error| ApiError::Internal(format!("rendering metrics: {error}")))?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .body(text))
}
