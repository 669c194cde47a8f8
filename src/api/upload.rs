//! The multipart endpoints (audio transcriptions and translations, image edits and variations):
//! route on the `model` field, stream the rewritten body upstream, stream the answer back.
use actix_web::body::BodyStream;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;

use crate::api::forward::route;
use crate::api::images;
use crate::errors::ApiError;
use crate::proxy::forward::{respond, send, upstream_request};
use crate::proxy::headers::{request_id, RequestId};
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
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| request_id(request.headers()), |id| id.0.clone());
    let mut log = AccessLog::start(request_id, "POST", path, request.peer_addr());
    let prepared = async {
        let upload = Upload::start(&request, payload, state.max_upload_bytes).await?;
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
    let (content_type, body, outcome) =
        upload.into_body(&endpoint.target_model_name, endpoint.upstream_image_format);
    let mut upstream = upstream_request(&client, &request, &endpoint, uri, &log);
    upstream
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    let response = match send(upstream, &endpoint, BodyStream::new(body), &mut log).await {
        Ok(response) => response,
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
    log.status = Some(error.status_code().as_u16());
    log.outcome = "rejected";
    error.error_response()
}
