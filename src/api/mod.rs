//! The whole URL map in one place.
pub mod admin;
pub mod health;
pub mod images;
pub mod metrics;
pub mod models;
pub mod responses;
pub mod status;
pub mod upload;

use actix_web::{web, HttpRequest};

use crate::errors;
use crate::pipeline;
use crate::pipeline::operation::Operation;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Fixed paths first: `/v1/responses/compact` and `/v1/responses/input_tokens` are
    // operations, not ids of `/v1/responses/{id}`.
    for &operation in Operation::JSON {
        cfg.service(
            resource(&format!("/{}", operation.path())).route(web::post().to(
                move |request: HttpRequest,
                      payload: web::Payload,
                      state: web::Data<AppState>,
                      client: web::Data<awc::Client>| {
                    pipeline::forward_json(operation, request, payload, state, client)
                },
            )),
        );
    }
    for &operation in Operation::MULTIPART {
        cfg.service(
            resource(&format!("/{}", operation.path())).route(web::post().to(
                move |request: HttpRequest,
                      payload: web::Payload,
                      state: web::Data<AppState>,
                      client: web::Data<awc::Client>| {
                    upload::upload(operation, request, payload, state, client)
                },
            )),
        );
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
    .service(
        resource("/health")
            .route(web::get().to(health::liveness))
            // Load balancers and liveness probes ask with HEAD.
            .route(web::head().to(health::liveness)),
    )
    .service(resource("/health/{model:.+}").route(web::get().to(health::model)))
    .service(resource("/ready").route(web::get().to(health::readiness)))
    .service(resource("/admin/config").route(web::get().to(admin::config)))
    // The status page shows what /admin/config does: access control guards it with the
    // admin credential (seam: these three routes, next to /admin/config).
    .service(resource("/").route(web::get().to(status::page)))
    .service(resource("/status").route(web::get().to(status::page)))
    .service(resource("/status.json").route(web::get().to(status::report)))
    .service(resource("/metrics").route(web::get().to(metrics::scrape)));
}

/// A URL of the map: any method it has no route for is a 405 in the OpenAI shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(errors::method_not_allowed))
}
