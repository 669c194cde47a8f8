//! GET /v1/images/data/{model}/{id}: images this instance serves, from its cache or fetched from
//! the model's `v1/images/data` endpoint. (Image generations, edits and variations are
//! forwarded by the pipeline; their answers are reworked by `proxy::image_answer`.)
use std::sync::Arc;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::errors::ApiError;
use crate::images::{CachedImage, IMAGE_DATA_PATH};
use crate::pipeline::admit::AdmitRequest;
use crate::pipeline::attempt::{attempt_headers, client_for};
use crate::pipeline::operation::Operation;
use crate::pipeline::record::{AccessLog, Outcome};
use crate::proxy::forward::{respond, send, upstream_request, UpstreamResponse};
use crate::routing::endpoint::Endpoint;
use crate::state::AppState;

/// GET /v1/images/data/{model}/{id}: from the cache, or fetched from the model's
/// `v1/images/data` endpoint (fast-openai-api-proxy's flow) and cached.
pub async fn data(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    let mut log = AccessLog::of_request(&request, Operation::ImagesData, &state.metrics);
    log.model = Some(model.as_str().into());
    let admitted = state.admitter.admit(&AdmitRequest {
        operation: Operation::ImagesData,
        model: &model,
        headers: request.headers(),
        body: &[],
    });
    match admitted {
        Ok(admission) => log.admission = Some(admission),
        Err(error) => return log.reject(error),
    }
    match find_image(&request, &model, &id, &state, &client, &mut log).await {
        Ok(Found::Image(image)) => {
            let response = serve(&request, image);
            log.status = Some(response.status().as_u16());
            log.outcome = Outcome::Ok;
            response
        }
        Ok(Found::Upstream(response, endpoint)) => {
            let mut response = respond(response, &endpoint, log);
            attempt_headers(&mut response, 1, &endpoint);
            response
        }
        Err(error) => {
            // `send` already recorded upstream failures.
            if log.status.is_none() {
                return log.reject(error);
            }
            error.error_response()
        }
    }
}

enum Found {
    Image(CachedImage),
    /// The upstream's own non-2xx answer, passed through.
    Upstream(UpstreamResponse, Arc<Endpoint>),
}

async fn find_image(
    request: &HttpRequest,
    model: &str,
    id: &str,
    state: &AppState,
    client: &awc::Client,
    log: &mut AccessLog,
) -> Result<Found, ApiError> {
    let not_found = || ApiError::ImageNotFound {
        model: model.to_owned(),
        id: id.to_owned(),
    };
    if let Some(image) = state.images.get(model, id) {
        log.bytes = image.bytes.len() as u64;
        return Ok(Found::Image(image));
    }
    let valid_id = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    let routes = state.table.lookup(model).ok_or_else(not_found)?;
    let pool = routes
        .pool(IMAGE_DATA_PATH)
        .filter(|_| valid_id)
        .ok_or_else(not_found)?;
    let endpoint = Arc::clone(pool.pick());
    let uri = format!("{}/{id}", endpoint.upstream_uri)
        .parse()
        .map_err(|_| not_found())?;
    log.endpoint = Some(Arc::clone(&endpoint));
    log.attempts = 1;
    let client = client_for(client, &endpoint);
    let upstream = upstream_request(client, request, &endpoint, uri, log);
    let mut response = send(upstream, &endpoint, (), log).await?;
    if !response.status().is_success() {
        return Ok(Found::Upstream(response, endpoint));
    }
    let limit = usize::try_from(state.images.max_bytes()).unwrap_or(usize::MAX);
    let bytes =
        response
            .body()
            .limit(limit)
            .await
            .map_err(|error| ApiError::UpstreamUnreachable {
                provider: endpoint.provider.to_string(),
                cause: format!("reading image `{id}` failed: {error}"),
            })?;
    log.bytes = bytes.len() as u64;
    state.images.insert(model, id, bytes.clone());
    // Already evicted again by concurrent inserts: served once anyway.
    let image = state.images.get(model, id).unwrap_or_else(|| CachedImage {
        content_type: crate::images::sniff_content_type(&bytes),
        etag: format!("\"{}\"", crate::images::new_id()),
        max_age: std::time::Duration::ZERO,
        bytes,
    });
    Ok(Found::Image(image))
}

fn serve(request: &HttpRequest, image: CachedImage) -> HttpResponse {
    let cache_control = format!("private, max-age={}", image.max_age.as_secs());
    let unchanged = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == image.etag || tag.trim() == "*");
    let mut builder = HttpResponse::build(match unchanged {
        true => StatusCode::NOT_MODIFIED,
        false => StatusCode::OK,
    });
    builder
        .insert_header((header::ETAG, image.etag))
        .insert_header((header::CACHE_CONTROL, cache_control));
    match unchanged {
        true => builder.finish(),
        false => builder
            .insert_header((header::CONTENT_TYPE, image.content_type))
            .body(image.bytes),
    }
}
