//! accept: the middleware every request passes first. It gives the request its id (the
//! client's `x-request-id` when usable, a new one otherwise, returned on every answer) and its
//! record: an `AccessLog` in the request's extensions, boxed once (`take_record`). Pipeline
//! handlers take it over (`AccessLog::of_request`); for any other request (404s, 405s, health, metrics, models, admin)
//! the middleware writes it once the answer is ready, so every request has one log line and one
//! metric without any handler opting in.
use std::future::Future;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, Error, HttpMessage, HttpRequest};

use super::admit::AnswerHeaders;
use super::operation::Operation;
use super::record::{AccessLog, Outcome};
use crate::proxy::headers::{request_id, X_REQUEST_ID};
use crate::state::AppState;

/// The record the middleware made, as the request's extensions hold it until a stage takes it
/// over. Boxed once here and handed over as the box (issue 16: the record by value was boxed by
/// the extensions map, moved out of that box by the handler and boxed again, two copies of its
/// ~500 bytes and an allocation more per request).
struct Accepted(Box<AccessLog>);

/// Takes over the record the middleware made for `request` (`None` without the middleware).
pub fn take_record(request: &HttpRequest) -> Option<Box<AccessLog>> {
    request
        .extensions_mut()
        .remove::<Accepted>()
        .map(|Accepted(log)| log)
}

/// The middleware, for `App::wrap_fn`.
pub fn middleware<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let id = request_id(request.headers());
    let method = method_name(request.method());
    let mut log = Box::new(AccessLog::start(
        id.clone(),
        method,
        "",
        request.peer_addr(),
    ));
    if let Some(traces) = request
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.traces.as_ref())
    {
        log.trace = Some(Box::new(traces.start_request(
            request.headers(),
            method,
            request.path(),
            log.request_id(),
        )));
    }
    request.extensions_mut().insert(Accepted(log));
    let response = service.call(request);
    async move {
        let mut response = response.await?;
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        // The admit stage's rate-limit headers (and decision trace), on answers and refusals
        // alike, and the record when no stage took it over: one borrow of the extensions.
        let (answer_headers, unrecorded) = {
            let mut extensions = response.request().extensions_mut();
            (
                extensions.remove::<AnswerHeaders>(),
                extensions.remove::<Accepted>(),
            )
        };
        if let Some(answer_headers) = answer_headers {
            answer_headers.add_to(response.headers_mut());
        }
        if let Some(Accepted(log)) = unrecorded {
            record_unrecorded(&response, log);
        }
        Ok(response)
    }
}

/// Writes the record of a request no pipeline stage took over.
fn record_unrecorded<B>(response: &ServiceResponse<B>, mut log: Box<AccessLog>) {
    let request = response.request();
    let status = response.status();
    log.path = service_path(request.match_pattern().as_deref());
    log.status = Some(status.as_u16());
    log.outcome = match status.as_u16() {
        400.. => Outcome::Rejected,
        _ => Outcome::Ok,
    };
    if let Some(state) = request.app_data::<web::Data<AppState>>() {
        // Counted in flight only while it is recorded: a scrape of /metrics does not count
        // itself.
        log.record_in(std::sync::Arc::clone(&state.metrics));
    }
}

/// The method as a static name for the record.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The path label of a request outside the pipeline: its route's pattern, bounded to the URL
/// map's own (an unknown URL is `unmatched`, whatever the client sent).
fn service_path(pattern: Option<&str>) -> &'static str {
    let Some(pattern) = pattern else {
        return "unmatched";
    };
    let operations = Operation::JSON.iter().chain(Operation::MULTIPART);
    if let Some(operation) = operations
        .copied()
        .find(|operation| pattern.strip_prefix('/') == Some(operation.path()))
    {
        return operation.path();
    }
    match pattern {
        "/health" => "health",
        "/health/{model:.+}" => "health/{model}",
        "/ready" => "ready",
        "/metrics" => "metrics",
        "/admin/config" => "admin/config",
        "/v1/models" => "v1/models",
        "/v1/models/{model:.+}" => "v1/models/{model}",
        "/v1/images/data/{model:.+}/{file_id}" => Operation::ImagesData.path(),
        "/v1/responses/{id}" => Operation::ResponsesRetrieve.path(),
        "/v1/responses/{id}/cancel" => Operation::ResponsesCancel.path(),
        "/v1/responses/{id}/input_items" => Operation::ResponsesInputItems.path(),
        _ => "other",
    }
}
