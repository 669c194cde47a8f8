//! The multipart endpoints (audio transcriptions and translations, image edits and variations):
//! route on the `model` field, stream the rewritten body upstream, stream the answer back.
use actix_web::body::BodyStream;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;
use std::time::Duration;

use crate::api::forward::route_once as route;
use crate::api::images;
use crate::config::load::DEFAULT_TIMEOUT;
use crate::errors::ApiError;
use crate::proxy::forward::{respond, send, upstream_request};
use crate::proxy::log::AccessLog;
use crate::proxy::multipart::Upload;
use crate::state::AppState;

pub async fn upload(
    path: &'static str,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, "POST", path, &state.metrics);
    let prepared = async {
        // No route is known while the first parts arrive: a client silent mid-upload for the
        // default request timeout fails the upload (400).
        let upload =
            Upload::start(&request, payload, state.max_upload_bytes, DEFAULT_TIMEOUT).await?;
        log.model = Some(upload.model.as_str().into());
        let (endpoint, uri) = route(&state.table, &upload.model, path)?;
        log.endpoint = Some(Arc::clone(&endpoint));
        Ok::<_, ApiError>((upload, endpoint, uri))
    }
    .await;
    let (upload, endpoint, uri) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return reject(error, &mut log),
    };
    let model = upload.model.clone();
    let body = upload.into_body(&endpoint);
    let outcome = body.outcome;
    // awc's timeout would also bound the upload itself; the request timeout starts once the
    // whole body is sent (a silent client is bounded by the pump's idle timeout instead).
    let mut upstream =
        upstream_request(&client, &request, &endpoint, uri, &log).timeout(NO_TIMEOUT);
    upstream
        .headers_mut()
        .insert(header::CONTENT_TYPE, body.content_type);
    let sending = send(upstream, &endpoint, BodyStream::new(body.stream), &mut log);
    // The request timeout runs from the moment the whole body is sent.
    let answered = async {
        if body.sent.await.is_ok() {
            tokio::time::sleep(endpoint.request_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let sent = tokio::select! {
        sent = sending => sent,
        () = answered => Err(ApiError::UpstreamTimeout {
            provider: endpoint.provider.to_string(),
            timeout: endpoint.request_timeout,
        }),
    };
    let response = match sent {
        Ok(response) => response,
        Err(error @ ApiError::UpstreamTimeout { .. }) => {
            return reject_with(error, &mut log, "upstream_timeout")
        }
        Err(error) => {
            // A broken or oversized client body is the client's fault, not the upstream's.
            let failure = outcome.borrow_mut().failure.take();
            return match failure {
                Some(failure) => reject(failure, &mut log),
                None => error.error_response(),
            };
        }
    };
    if path.starts_with("v1/images/") {
        let response_format = outcome.borrow().response_format.clone();
        images::answer(response, &endpoint, &model, response_format, &state, log).await
    } else {
        respond(response, &endpoint, log)
    }
}

fn reject(error: ApiError, log: &mut AccessLog) -> HttpResponse {
    reject_with(error, log, "rejected")
}

fn reject_with(error: ApiError, log: &mut AccessLog, outcome: &'static str) -> HttpResponse {
    log.status = Some(error.status_code().as_u16());
    log.outcome = outcome;
    error.error_response()
}

/// Long enough to never fire: uploads are bounded by their own timeouts.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
