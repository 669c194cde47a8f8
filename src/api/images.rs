//! Image endpoints: generations (JSON), the answers of every /v1/images/* endpoint (URLs rewritten
//! to this instance, base64 turned into cached URLs), and GET /v1/images/data/{model}/{id}.
use std::sync::Arc;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::forward::prepare_once as prepare;
use crate::errors::ApiError;
use crate::images::{image_url, CachedImage, IMAGE_DATA_PATH};
use crate::proxy::forward::{is_event_stream, respond, send, upstream_request, UpstreamResponse};
use crate::proxy::headers::keep_response_header;
use crate::proxy::log::AccessLog;
use crate::routing::endpoint::{Endpoint, UpstreamImageFormat};
use crate::shared::image_data::ImageStore;
use crate::state::AppState;

/// Largest image answer llmux reads whole to rewrite it.
const MAX_IMAGE_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// POST /v1/images/generations: the JSON path, plus `upstream_image_format` and URL rewriting.
pub async fn generations(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    const PATH: &str = "v1/images/generations";
    let mut log = AccessLog::of_request(&request, "POST", PATH, &state.metrics);
    let prepared = async {
        let (endpoint, uri, body) = prepare(PATH, &request, payload, &state, &mut log).await?;
        let (body, response_format) = ask_for_b64_json(body, endpoint.upstream_image_format)?;
        Ok::<_, ApiError>((endpoint, uri, body, response_format))
    }
    .await;
    let (endpoint, uri, body, response_format) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            log.status = Some(error.status_code().as_u16());
            log.outcome = "rejected";
            return error.error_response();
        }
    };
    let model = log.model.as_deref().unwrap_or("").to_owned();
    let upstream = upstream_request(&client, &request, &endpoint, uri, &log);
    match send(upstream, &endpoint, body, &mut log).await {
        Ok(response) => answer(response, &endpoint, &model, response_format, &state, log).await,
        Err(error) => error.error_response(),
    }
}

/// The answer to an image request: a successful JSON answer is read whole and its images are made
/// URLs of this instance; anything else (errors, SSE partial images) streams through untouched.
pub async fn answer(
    mut response: UpstreamResponse,
    endpoint: &Arc<Endpoint>,
    model: &str,
    response_format: Option<String>,
    state: &AppState,
    mut log: AccessLog,
) -> HttpResponse {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(is_event_stream);
    if !response.status().is_success() || !json || streamed {
        return respond(response, endpoint, log);
    }
    let status = response.status();
    log.status = Some(status.as_u16());
    let body = match response.body().limit(MAX_IMAGE_ANSWER_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            let error = ApiError::UpstreamUnreachable {
                provider: endpoint.provider.to_string(),
                cause: format!("reading the image answer failed: {error}"),
            };
            log.status = Some(error.status_code().as_u16());
            log.outcome = "upstream_body_error";
            return error.error_response();
        }
    };
    let wants_url = !matches!(response_format.as_deref(), Some(format) if format != "url");
    let store = match endpoint.upstream_image_format {
        UpstreamImageFormat::B64Json if wants_url => Some(&*state.images),
        _ => None,
    };
    let body = rewrite_images(&body, &state.base_url, model, store)
        .await
        .map_or(body, Bytes::from);
    let mut builder = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if keep_response_header(name) {
            builder.append_header((name.clone(), value.clone()));
        }
    }
    log.first_byte = Some(log.started.elapsed());
    log.bytes = body.len() as u64;
    log.outcome = "ok";
    builder.body(body)
}

/// GET /v1/images/data/{model}/{id}: from the cache, or fetched from the model's
/// `v1/images/data` endpoint (fast-openai-api-proxy's flow) and cached.
pub async fn data(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    let mut log = AccessLog::of_request(&request, "GET", IMAGE_DATA_PATH, &state.metrics);
    log.model = Some(model.as_str().into());
    match find_image(&request, &model, &id, &state, &client, &mut log).await {
        Ok(Found::Image(image)) => {
            let response = serve(&request, image);
            log.status = Some(response.status().as_u16());
            log.outcome = "ok";
            response
        }
        Ok(Found::Upstream(response, endpoint)) => respond(response, &endpoint, log),
        Err(error) => {
            // `send` already recorded upstream failures.
            if log.status.is_none() {
                log.status = Some(error.status_code().as_u16());
                log.outcome = "rejected";
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
    if let Some(image) = state.images.get(model, id).await {
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
    let upstream = upstream_request(client, request, &endpoint, uri, log);
    let mut response = send(upstream, &endpoint, (), log).await?;
    if !response.status().is_success() {
        return Ok(Found::Upstream(response, endpoint));
    }
    let limit = usize::try_from(state.images.local().max_bytes()).unwrap_or(usize::MAX);
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
    // Any replica can fetch it again: kept in this one's memory only.
    state.images.keep_local(model, id, bytes.clone());
    // Already evicted again by concurrent inserts: served once anyway.
    let image = state
        .images
        .local()
        .get(model, id)
        .unwrap_or_else(|| CachedImage {
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

/// For `b64_json` endpoints, sets `response_format` to `b64_json` and returns what the client
/// asked for; other keys keep their order and bytes.
fn ask_for_b64_json(
    body: Bytes,
    format: UpstreamImageFormat,
) -> Result<(Bytes, Option<String>), ApiError> {
    if format != UpstreamImageFormat::B64Json {
        return Ok((body, None));
    }
    let mut object: IndexMap<String, Box<RawValue>> =
        serde_json::from_slice(&body).map_err(|source| ApiError::InvalidJson { source })?;
    let asked = object
        .get("response_format")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    let b64 = RawValue::from_string("\"b64_json\"".into())
        .map_err(|source| ApiError::InvalidJson { source })?;
    object.insert("response_format".into(), b64);
    let body = serde_json::to_vec(&object).map_err(|source| ApiError::InvalidJson { source })?;
    Ok((Bytes::from(body), asked))
}

/// Rewrites the `data[]` of an images answer: URLs `{base_url}/v1/images/data/{id}` become
/// `{base_url}/v1/images/data/{model}/{id}`, and with a cache, `b64_json` images are stored and
/// answered as URLs. `None` when nothing changed.
pub async fn rewrite_images(
    body: &[u8],
    base_url: &str,
    model: &str,
    store: Option<&dyn ImageStore>,
) -> Option<Vec<u8>> {
    let mut answer: Value = serde_json::from_slice(body).ok()?;
    let prefix = format!("{base_url}/{IMAGE_DATA_PATH}/");
    let mut changed = false;
    for image in answer.get_mut("data")?.as_array_mut()?.iter_mut() {
        let Some(image) = image.as_object_mut() else {
            continue;
        };
        let upstream_id = image
            .get("url")
            .and_then(Value::as_str)
            .and_then(|url| url.strip_prefix(&prefix))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_owned);
        if let Some(id) = upstream_id {
            image.insert("url".into(), image_url(base_url, model, &id).into());
            changed = true;
        }
        let Some(store) = store else { continue };
        let decoded = image
            .get("b64_json")
            .and_then(Value::as_str)
            .and_then(|b64| STANDARD.decode(b64.trim()).ok());
        let Some(bytes) = decoded else { continue };
        if let Some(id) = store.insert_new(model, Bytes::from(bytes)).await {
            image.remove("b64_json");
            image.insert("url".into(), image_url(base_url, model, &id).into());
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&answer).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageCache;
    use std::time::Duration;

    #[tokio::test]
    async fn proxy_urls_get_the_model_and_b64_images_become_cached_urls() {
        let cache = ImageCache::new(1024, Duration::from_secs(60));
        let body = serde_json::json!({"created": 1, "data": [
            {"url": "http://llmux:8000/v1/images/data/abc"},
            {"url": "https://elsewhere/x.png"},
            {"b64_json": STANDARD.encode(b"\x89PNG\r\n\x1a\nxx"), "revised_prompt": "p"}
        ]});
        let out = rewrite_images(
            body.to_string().as_bytes(),
            "http://llmux:8000",
            "m",
            Some(&cache),
        )
        .await
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["data"][0]["url"],
            "http://llmux:8000/v1/images/data/m/abc"
        );
        assert_eq!(out["data"][1]["url"], "https://elsewhere/x.png");
        let url = out["data"][2]["url"].as_str().unwrap();
        let id = url
            .strip_prefix("http://llmux:8000/v1/images/data/m/")
            .unwrap();
        assert_eq!(
            cache.local().get("m", id).unwrap().content_type,
            "image/png"
        );
        assert!(out["data"][2].get("b64_json").is_none());
        assert_eq!(out["data"][2]["revised_prompt"], "p");
        let untouched =
            serde_json::json!({"data": [{"url": "https://elsewhere/x.png"}]}).to_string();
        let unchanged = rewrite_images(untouched.as_bytes(), "http://llmux:8000", "m", None).await;
        assert!(unchanged.is_none());
    }

    #[test]
    fn b64_endpoints_ask_for_b64_json_keeping_the_other_keys_in_order() {
        let body =
            Bytes::from_static(br#"{"model":"t","prompt":"a cat","response_format":"url","n":2}"#);
        let (out, asked) = ask_for_b64_json(body, UpstreamImageFormat::B64Json).unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"t","prompt":"a cat","response_format":"b64_json","n":2}"#
        );
        assert_eq!(asked.as_deref(), Some("url"));
        let body = Bytes::from_static(br#"{"model":"t", "prompt":"x"}"#);
        let (out, asked) =
            ask_for_b64_json(body.clone(), UpstreamImageFormat::AsRequested).unwrap();
        assert_eq!(out, body);
        assert_eq!(asked, None);
    }
}
