//! The answers of every /v1/images/* request: a successful JSON answer is read whole, URLs of the
//! upstream's image-data endpoint become this instance's, and (for `b64_json` endpoints whose
//! client wants URLs) base64 images are cached and answered as URLs.
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::forward::{is_event_stream, respond, UpstreamResponse};
use super::headers::copy_response_headers;
use super::rewrite::ImagesAnswer;
use crate::errors::ApiError;
use crate::images::{image_url, ImageCache, IMAGE_DATA_PATH};
use crate::pipeline::record::{AccessLog, Outcome};
use crate::routing::endpoint::{Endpoint, UpstreamImageFormat};

/// Largest image answer llmux reads whole to rewrite it.
const MAX_IMAGE_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// The answer to an image request: a successful JSON answer is read whole and its images are made
/// URLs of this instance; anything else (errors, SSE partial images) streams through untouched.
pub async fn answer(
    mut response: UpstreamResponse,
    endpoint: &Arc<Endpoint>,
    asked: ImagesAnswer,
    base_url: &str,
    images: &ImageCache,
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
            log.outcome = Outcome::UpstreamBodyError;
            return error.error_response();
        }
    };
    let cache = match endpoint.upstream_image_format {
        UpstreamImageFormat::B64Json if asked.wants_url => Some(images),
        _ => None,
    };
    let model = &endpoint.exposed_model;
    let body = rewrite_images(&body, base_url, model, cache).map_or(body, Bytes::from);
    let mut builder = HttpResponse::build(status);
    copy_response_headers(response.headers(), &mut builder);
    log.first_byte = Some(log.started.elapsed());
    log.bytes = body.len() as u64;
    log.outcome = Outcome::Ok;
    builder.body(body)
}

/// Rewrites the `data[]` of an images answer: URLs `{base_url}/v1/images/data/{id}` become
/// `{base_url}/v1/images/data/{model}/{id}`, and with a cache, `b64_json` images are stored and
/// answered as URLs. `None` when nothing changed.
pub fn rewrite_images(
    body: &[u8],
    base_url: &str,
    model: &str,
    cache: Option<&ImageCache>,
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
        let Some(cache) = cache else { continue };
        let decoded = image
            .get("b64_json")
            .and_then(Value::as_str)
            .and_then(|b64| STANDARD.decode(b64.trim()).ok());
        if let Some(id) = decoded.and_then(|bytes| cache.insert_new(model, Bytes::from(bytes))) {
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
    use std::time::Duration;

    #[test]
    fn proxy_urls_get_the_model_and_b64_images_become_cached_urls() {
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
        assert_eq!(cache.get("m", id).unwrap().content_type, "image/png");
        assert!(out["data"][2].get("b64_json").is_none());
        assert_eq!(out["data"][2]["revised_prompt"], "p");
        let untouched =
            serde_json::json!({"data": [{"url": "https://elsewhere/x.png"}]}).to_string();
        assert!(rewrite_images(untouched.as_bytes(), "http://llmux:8000", "m", None).is_none());
    }
}
