//! The whole URL map in one place.
pub mod admin;
pub mod health;
pub mod images;
pub mod metrics;
pub mod models;
pub mod prefix;
pub mod responses;
pub mod status;
pub mod upload;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::errors::{self, ApiError};
use crate::pipeline;
use crate::pipeline::operation::Operation;
use crate::realtime;
use crate::routing::families::FAMILY_ROUTES;
use crate::state::AppState;
use crate::upstream::UpstreamClients;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Fixed paths first: `/v1/responses/compact` and `/v1/responses/input_tokens` are
    // operations, not ids of `/v1/responses/{id}`.
    for &operation in Operation::JSON {
        let resource = resource(&format!("/{}", operation.path())).route(post().to(
            move |request: HttpRequest,
                  payload: web::Payload,
                  state: web::Data<AppState>,
                  clients: web::Data<UpstreamClients>| {
                pipeline::forward_json(operation, request, payload, state, clients)
            },
        ));
        // `GET /v1/chat/completions` lists stored chat completions: same URL, other method.
        cfg.service(with_family_routes(resource, operation.path()));
    }
    // Model-less families (files, batches, ...): one resource per path, a route per method.
    let mut family_paths: Vec<&'static str> = Vec::new();
    for family_route in FAMILY_ROUTES {
        let path = family_route.path;
        let taken = Operation::JSON.iter().any(|o| o.path() == path);
        if !taken && !family_paths.contains(&path) {
            family_paths.push(path);
            cfg.service(with_family_routes(resource(&format!("/{path}")), path));
        }
    }
    for &operation in Operation::MULTIPART {
        cfg.service(resource(&format!("/{}", operation.path())).route(post().to(
            move |request: HttpRequest,
                  payload: web::Payload,
                  state: web::Data<AppState>,
                  clients: web::Data<UpstreamClients>| {
                upload::upload(operation, request, payload, state, clients)
            },
        )));
    }
    cfg.service(
        resource("/v1/images/data/{model:.+}/{file_id}").route(web::get().to(images::data)),
    )
    .service(resource("/v1/models").route(web::get().to(models::list)))
    .service(resource("/v1/models/{model:.+}").route(web::get().to(models::retrieve)))
    .service(
        resource("/v1/responses/{id}")
            .route(web::get().to(responses::retrieve))
            .route(web::delete().to(responses::delete)),
    )
    .service(resource("/v1/responses/{id}/cancel").route(web::post().to(responses::cancel)))
    .service(
        resource("/v1/responses/{id}/input_items").route(web::get().to(responses::input_items)),
    )
    .service(resource("/v1/realtime").route(web::get().to(realtime::connect)))
    .service(resource("/v1/realtime/calls").route(web::post().to(
        |request: HttpRequest,
         payload: web::Payload,
         state: web::Data<AppState>,
         clients: web::Data<UpstreamClients>| {
            pipeline::forward_raw(Operation::RealtimeCalls, request, payload, state, clients)
        },
    )))
    .service(
        resource("/health")
            .route(web::get().to(health::liveness))
            // Load balancers and liveness probes ask with HEAD.
            .route(web::head().to(health::liveness)),
    )
    .service(resource("/health/{model:.+}").route(web::get().to(health::model)))
    .service(resource("/ready").route(web::get().to(health::readiness)))
    // Everything under /admin needs the admin credential (503 when none is configured).
    .service(
        web::scope("/admin")
            .wrap(actix_web::middleware::from_fn(admin::gate))
            .service(resource("/config").route(web::get().to(admin::config))),
    )
    // The status page shows what /admin/config does: access control guards it with the
    // admin credential (seam: these three routes, next to /admin/config).
    .service(resource("/").route(web::get().to(status::page)))
    .service(resource("/status").route(web::get().to(status::page)))
    .service(resource("/status.json").route(web::get().to(status::report)))
    .service(resource("/metrics").route(web::get().to(metrics::scrape)));
}

/// `resource` with a route for each family route on `path`.
fn with_family_routes(mut resource: actix_web::Resource, path: &str) -> actix_web::Resource {
    for family_route in FAMILY_ROUTES.iter().filter(|r| r.path == path) {
        let method = actix_web::http::Method::from_bytes(family_route.method.as_bytes())
            .unwrap_or(actix_web::http::Method::GET);
        resource = resource.route(web::method(method).to(
            move |request: HttpRequest,
                  payload: web::Payload,
                  state: web::Data<AppState>,
                  clients: web::Data<UpstreamClients>| {
                pipeline::family::forward_family(family_route, request, payload, state, clients)
            },
        ));
    }
    resource
}

/// The app's default service: a path under `/v1` llmux has no route for goes to the
/// passthrough provider when one is configured; anything else is a 404 `unknown_url`.
pub async fn unknown_or_passthrough(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    clients: web::Data<UpstreamClients>,
) -> HttpResponse {
    match pipeline::family::forward_passthrough(&request, payload, &state, &clients).await {
        Some(response) => response,
        None => actix_web::ResponseError::error_response(&ApiError::UnknownRoute {
            method: request.method().to_string(),
            path: request.path().to_owned(),
        }),
    }
}

/// `web::post()` without its bookkeeping: actix's method guard records each method it checks in
/// the request's extensions (a `Vec` and a box per request, issue 16) for an `Allow` header that
/// llmux's own 405 (`resource`'s default service) does not send.
fn post() -> actix_web::Route {
    web::route().guard(actix_web::guard::fn_guard(|context| {
        context.head().method == actix_web::http::Method::POST
    }))
}

/// A URL of the map: any method it has no route for is a 405 in the OpenAI shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(errors::method_not_allowed))
}
