//! The answers of every /v1/images/* request: a successful JSON answer is read whole, URLs of the
//! upstream's image-data endpoint become this instance's, and (for `b64_json` endpoints whose
//! client wants URLs) base64 images are cached and answered as URLs.
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::forward::{is_event_stream, respond, UpstreamResponse};
use super::headers::copy_response_headers;
use super::json::{apply, elements, find, members};
use super::rewrite::ImagesAnswer;
use crate::errors::ApiError;
use crate::images::{image_url, IMAGE_DATA_PATH};
use crate::pipeline::record::{AccessLog, Outcome};
use crate::routing::endpoint::{Endpoint, UpstreamImageFormat};
use crate::shared::image_data::ImageStore;

/// Largest image answer llmux reads whole to rewrite it.
const MAX_IMAGE_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// The answer to an image request: a successful JSON answer is read whole and its images are made
/// URLs of this instance; anything else (errors, SSE partial images) streams through untouched.
pub async fn answer(
    mut response: UpstreamResponse,
    endpoint: &Arc<Endpoint>,
    asked: ImagesAnswer,
    base_url: &str,
    images: &dyn ImageStore,
    log: impl Into<Box<AccessLog>>,
) -> HttpResponse {
    let mut log = log.into();
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
    let body = rewrite_images(&body, base_url, model, cache)
        .await
        .unwrap_or(body);
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
///
/// By span, like the request rewrites (issue 20: parsing the whole answer into a tree cost 4x a
/// 106 MB answer): only the spans of `data[]`'s `url` and `b64_json` members are replaced, every
/// other byte stays as the upstream sent it, and without a store an answer that does not contain
/// the upstream's image-data URL is not parsed at all.
pub async fn rewrite_images(
    body: &Bytes,
    base_url: &str,
    model: &str,
    store: Option<&dyn ImageStore>,
) -> Option<Bytes> {
    let prefix = format!("{base_url}/{IMAGE_DATA_PATH}/");
    if store.is_none() && memchr::memmem::find(body, prefix.as_bytes()).is_none() {
        return None;
    }
    let top = members(body, 0..body.len()).ok()?;
    let data = find(&top, "data")?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for image in elements(body, data.value.clone()).ok()? {
        if body.get(image.start) != Some(&b'{') {
            continue;
        }
        let Ok(fields) = members(body, image) else {
            continue;
        };
        let url = find(&fields, "url");
        let upstream_id = url
            .and_then(|member| string_at(body, member.value.clone()))
            .and_then(|url| url.strip_prefix(&prefix).map(str::to_owned))
            .filter(|id| !id.is_empty() && !id.contains('/'));
        if let (Some(id), Some(member)) = (upstream_id, url) {
            edits.push((
                member.value.clone(),
                json_string(&image_url(base_url, model, &id)),
            ));
        }
        let Some(store) = store else { continue };
        // An image with both keeps its `b64_json`: replacing it would repeat `url`.
        let Some(b64) = find(&fields, "b64_json").filter(|_| url.is_none()) else {
            continue;
        };
        let decoded =
            string_at(body, b64.value.clone()).and_then(|text| STANDARD.decode(text.trim()).ok());
        let Some(bytes) = decoded else { continue };
        if let Some(id) = store.insert_new(model, Bytes::from(bytes)).await {
            let url = json_string(&image_url(base_url, model, &id));
            edits.push((b64.span.clone(), format!("\"url\":{url}")));
        }
    }
    if edits.is_empty() {
        return None;
    }
    Some(apply(body, edits))
}

/// The JSON string at `span` (borrowed when it has no escapes, as base64 never has).
fn string_at(body: &[u8], span: Range<usize>) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    serde_json::from_slice::<Text<'_>>(&body[span])
        .ok()
        .map(|text| text.0)
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageCache;
    use serde_json::Value;
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
            &Bytes::from(body.to_string()),
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
        assert!(
            rewrite_images(&Bytes::from(untouched), "http://llmux:8000", "m", None)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn image_answers_are_rewritten_by_span_keeping_every_other_byte() {
        // Issue 20: the answer was parsed into a tree and re-serialized.
        let body = Bytes::from_static(
            br#"{ "created" : 1.50, "data":[{"revised_prompt":"a \u0063at","url":"http://l/v1/images/data/abc"}], "z":0 }"#,
        );
        let out = rewrite_images(&body, "http://l", "m", None).await.unwrap();
        assert_eq!(
            &out[..],
            br#"{ "created" : 1.50, "data":[{"revised_prompt":"a \u0063at","url":"http://l/v1/images/data/m/abc"}], "z":0 }"#
        );
        let cache = ImageCache::new(1024, Duration::from_secs(60));
        let b64 = Bytes::from(format!(
            r#"{{"data":[{{"b64_json": "{}", "n":1}}]}}"#,
            STANDARD.encode(b"\x89PNG\r\n\x1a\nxx")
        ));
        let out = String::from_utf8(
            rewrite_images(&b64, "http://l", "m", Some(&cache))
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(
            out.starts_with(r#"{"data":[{"url":"http://l/v1/images/data/m/"#),
            "{out}"
        );
        assert!(out.ends_with(r#"", "n":1}]}"#), "{out}");
    }
}
