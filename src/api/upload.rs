//! The multipart endpoints (audio transcriptions and translations, image edits and variations):
//! read up to the `model` field, admit, route, then ONE attempt that streams the rewritten body
//! upstream (a streamed body cannot be replayed for a retry: it is not kept), and the answer
//! streamed back with the attempt headers. The attempt's outcome feeds the member's breaker
//! like any other attempt, so a failing member is still ejected and skipped by later requests.
use actix_web::body::BodyStream;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;
use std::time::Duration;

use crate::config::load::DEFAULT_TIMEOUT;
use crate::errors::ApiError;
use crate::pipeline::admit::AdmitRequest;
use crate::pipeline::attempt::{attempt_headers, classify, client_for, record_breaker};
use crate::pipeline::operation::Operation;
use crate::pipeline::record::{AccessLog, Outcome};
use crate::pipeline::route;
use crate::proxy::forward::{respond, send, upstream_request};
use crate::proxy::image_answer;
use crate::proxy::multipart::Upload;
use crate::proxy::rewrite::ImagesAnswer;
use crate::state::AppState;

pub async fn upload(
    operation: Operation,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let mut log = AccessLog::of_request(&request, operation, &state.metrics);
    let prepared = async {
        // No route is known while the first parts arrive: a client silent mid-upload for the
        // default request timeout fails the upload (400).
        let upload =
            Upload::start(&request, payload, state.max_upload_bytes, DEFAULT_TIMEOUT).await?;
        log.model = Some(upload.model.as_str().into());
        log.admission = Some(state.admitter.admit(&AdmitRequest {
            operation,
            model: &upload.model,
            headers: request.headers(),
            body: &[],
        })?);
        let routed = route::route(
            &state.table,
            &state.responses,
            operation,
            &upload.model,
            None,
        )?;
        let endpoint = Arc::clone(&routed.pool().members()[routed.pool().select()]);
        let uri = routed.uri_for(&endpoint)?;
        log.endpoint = Some(Arc::clone(&endpoint));
        Ok::<_, ApiError>((upload, routed, endpoint, uri))
    }
    .await;
    let (upload, routed, endpoint, uri) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return log.reject(error),
    };
    log.attempts = 1;
    let body = upload.into_body(&endpoint);
    let outcome = body.outcome;
    // awc's timeout would also bound the upload itself; the request timeout starts once the
    // whole body is sent (a silent client is bounded by the pump's idle timeout instead).
    let client = client_for(&client, &endpoint);
    let mut upstream = upstream_request(client, &request, &endpoint, uri, &log).timeout(NO_TIMEOUT);
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
    // A broken or oversized client body is the client's fault, not the upstream's.
    let failure = outcome.borrow_mut().failure.take();
    if sent.is_err() {
        if let Some(failure) = failure {
            return log.reject(failure);
        }
    }
    record_breaker(
        routed.pool(),
        &endpoint,
        classify(&sent).verdict,
        &state.retry,
        &log,
    );
    let mut response = match sent {
        Ok(response) if operation.path().starts_with("v1/images/") => {
            let asked = ImagesAnswer::asked(outcome.borrow().response_format.as_deref());
            image_answer::answer(
                response,
                &endpoint,
                asked,
                &state.base_url,
                &state.images,
                log,
            )
            .await
        }
        Ok(response) => respond(response, &endpoint, log),
        Err(error) => {
            if let ApiError::UpstreamTimeout { .. } = error {
                log.status = Some(actix_web::ResponseError::status_code(&error).as_u16());
                log.outcome = Outcome::UpstreamTimeout;
            }
            actix_web::ResponseError::error_response(&error)
        }
    };
    attempt_headers(&mut response, 1, &endpoint);
    response
}

/// Long enough to never fire: uploads are bounded by their own timeouts.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
