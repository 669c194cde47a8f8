//! accept: the middleware every request passes first. It gives the request its id (the
//! client's `x-request-id` when usable, a new one otherwise, returned on every answer) and its
//! record: an `AccessLog` in the request's extensions, boxed once (`take_record`). Pipeline
//! handlers take it over (`AccessLog::of_request`); for any other request (404s, 405s, health, metrics, models, admin)
//! the middleware writes it once the answer is ready, so every request has one log line and one
//! metric without any handler opting in. Then the front's checks, before routing: the header
//! limits (a 431 in the OpenAI shape) and the `--path-prefix` strip.
//!
//! One layer for all of it when no CORS origin is configured (issue 16: the checks were two
//! `wrap_fn` layers of their own, plus a disabled `Condition<Cors>`, each a service call, a
//! future and an answer body type around every request); with CORS on, the checks stay a layer
//! of their own inside `Cors`, as before, so a preflight is answered before them and their 431
//! gets the CORS headers.
use std::future::Future;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::http::Method;
use actix_web::{web, Error, HttpMessage, HttpRequest};
use futures_util::future::{ready, Either, Ready};

use super::admit::AnswerHeaders;
use super::operation::Operation;
use super::record::{AccessLog, Outcome};
use crate::api::prefix::PathPrefixes;
use crate::errors::ApiError;
use crate::proxy::headers::{request_id, X_REQUEST_ID};
use crate::state::AppState;

/// Limits on a request's headers beyond actix's own (at most 96 headers and a 128 KiB head,
/// answered with an empty 431): these answer 431 in the OpenAI error shape.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_bytes: usize,
    pub max_count: usize,
}

/// What the front checks before routing, in this order: the header limits, then the path
/// prefixes (a refused request is recorded under its path as sent).
#[derive(Debug, Clone)]
pub struct FrontChecks {
    pub limits: HeaderLimits,
    pub prefixes: PathPrefixes,
}

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

impl HeaderLimits {
    fn check(self, headers: &HeaderMap) -> Result<(), ApiError> {
        // One pass for both (`HeaderMap::len` is a pass of its own).
        let (count, bytes) = headers
            .iter()
            .fold((0, 0), |(count, bytes), (name, value)| {
                (count + 1, bytes + name.as_str().len() + value.len())
            });
        if count > self.max_count || bytes > self.max_bytes {
            return Err(ApiError::HeadersTooLarge {
                max_bytes: self.max_bytes,
                max_count: self.max_count,
            });
        }
        Ok(())
    }
}

impl FrontChecks {
    /// Refuses a request over the header limits, else strips its path prefix.
    fn check(&self, request: &mut ServiceRequest) -> Result<(), ApiError> {
        self.limits.check(request.headers())?;
        if !self.prefixes.is_empty() {
            self.prefixes.strip(request);
        }
        Ok(())
    }
}

/// The whole front in one layer, for `App::wrap_fn` around the routes (no CORS): the request's
/// id and record, then the checks.
pub fn middleware<S>(
    mut request: ServiceRequest,
    service: &S,
    checks: &FrontChecks,
    state: &web::Data<AppState>,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
    S::Future: 'static,
{
    let id = accept(&request, state);
    let called = match checks.check(&mut request) {
        Ok(()) => Ok(service.call(request)),
        Err(refusal) => Err(request.error_response(refusal)),
    };
    let state = state.clone();
    async move {
        let response = match called {
            Ok(answer) => answer.await?,
            Err(refused) => refused,
        };
        Ok(answered(response, id, &state))
    }
}

/// The request's id and record alone, for `App::wrap_fn` outside `Cors` (whose answers have a
/// body type of their own); the checks are [`checks_middleware`], inside it.
pub fn accept_middleware<S, B>(
    request: ServiceRequest,
    service: &S,
    state: &web::Data<AppState>,
) -> impl Future<Output = Result<ServiceResponse<B>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let id = accept(&request, state);
    let response = service.call(request);
    let state = state.clone();
    async move { Ok(answered(response.await?, id, &state)) }
}

/// The checks alone, for `App::wrap_fn` inside `Cors`.
pub fn checks_middleware<S>(
    mut request: ServiceRequest,
    service: &S,
    checks: &FrontChecks,
) -> Either<S::Future, Ready<Result<ServiceResponse<BoxBody>, Error>>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
{
    match checks.check(&mut request) {
        Ok(()) => Either::Left(service.call(request)),
        Err(refusal) => Either::Right(ready(Ok(request.error_response(refusal)))),
    }
}

/// Gives the request its id and record; returns the id for the answer.
fn accept(request: &ServiceRequest, state: &AppState) -> actix_web::http::header::HeaderValue {
    let id = request_id(request.headers());
    let method = method_name(request.method());
    let mut log = Box::new(AccessLog::start(
        id.clone(),
        method,
        "",
        request.peer_addr(),
    ));
    if let Some(traces) = &state.traces {
        log.trace = Some(Box::new(traces.start_request(
            request.headers(),
            method,
            request.path(),
            log.request_id(),
        )));
    }
    request.extensions_mut().insert(Accepted(log));
    id
}

/// The answer's id, the admit stage's rate-limit headers (and decision trace), on answers and
/// refusals alike, and the record when no stage took it over: one borrow of the extensions.
fn answered<B>(
    mut response: ServiceResponse<B>,
    id: actix_web::http::header::HeaderValue,
    state: &AppState,
) -> ServiceResponse<B> {
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
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
        record_unrecorded(&response, log, state);
    }
    response
}

/// Writes the record of a request no pipeline stage took over.
fn record_unrecorded<B>(response: &ServiceResponse<B>, mut log: Box<AccessLog>, state: &AppState) {
    let request = response.request();
    let status = response.status();
    log.path = service_path(request.match_pattern().as_deref());
    log.status = Some(status.as_u16());
    log.outcome = match status.as_u16() {
        400.. => Outcome::Rejected,
        _ => Outcome::Ok,
    };
    // Counted in flight only while it is recorded: a scrape of /metrics does not count itself.
    log.record_in(std::sync::Arc::clone(&state.metrics));
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
