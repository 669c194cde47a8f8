//! The whole URL map in one place.
pub mod admin;
pub mod forward;
pub mod health;
pub mod images;
pub mod metrics;
pub mod models;
pub mod responses;
pub mod upload;

use actix_web::{web, HttpRequest};

use crate::errors;
use crate::realtime;
use crate::state::AppState;

/// OpenAI endpoints that take a JSON body with a `model` and are forwarded to its endpoint.
pub const JSON_PATHS: &[&str] = &[
    "v1/chat/completions",
    "v1/completions",
    "v1/embeddings",
    "v1/moderations",
    "v1/audio/speech",
    "v1/responses",
    "v1/responses/input_tokens",
];

/// OpenAI endpoints that take a multipart/form-data body with a `model` field.
pub const UPLOAD_PATHS: &[&str] = &[
    "v1/audio/transcriptions",
    "v1/audio/translations",
    "v1/images/edits",
    "v1/images/variations",
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    for &path in JSON_PATHS {
        cfg.service(resource(&format!("/{path}")).route(web::post().to(
            move |request: HttpRequest,
                  payload: web::Payload,
                  state: web::Data<AppState>,
                  client: web::Data<awc::Client>| {
                forward::json(path, request, payload, state, client)
            },
        )));
    }
    for &path in UPLOAD_PATHS {
        cfg.service(resource(&format!("/{path}")).route(web::post().to(
            move |request: HttpRequest,
                  payload: web::Payload,
                  state: web::Data<AppState>,
                  client: web::Data<awc::Client>| {
                upload::upload(path, request, payload, state, client)
            },
        )));
    }
    cfg.service(resource("/v1/images/generations").route(web::post().to(images::generations)))
        .service(
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
        .service(resource("/health").route(web::get().to(health::liveness)))
        .service(resource("/health/{model:.+}").route(web::get().to(health::model)))
        .service(resource("/ready").route(web::get().to(health::readiness)))
        .service(resource("/admin/config").route(web::get().to(admin::config)))
        .service(resource("/metrics").route(web::get().to(metrics::scrape)));
}

/// A URL of the map: any method it has no route for is a 405 in the OpenAI shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(errors::method_not_allowed))
}
