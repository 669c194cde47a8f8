//! The whole URL map in one place.
pub mod forward;
pub mod health;
pub mod metrics;
pub mod models;

use actix_web::{web, HttpRequest};

use crate::errors;

/// OpenAI endpoints that take a JSON body with a `model` and are forwarded to its endpoint.
pub const JSON_PATHS: &[&str] = &[
    "v1/chat/completions",
    "v1/completions",
    "v1/embeddings",
    "v1/moderations",
    "v1/images/generations",
    "v1/audio/speech",
    "v1/responses",
    "v1/responses/input_tokens",
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    for &path in JSON_PATHS {
        cfg.service(
            web::resource(format!("/{path}"))
                .route(web::post().to(
                    move |request: HttpRequest,
                          payload: web::Payload,
                          state: web::Data<crate::state::AppState>,
                          client: web::Data<awc::Client>| {
                        forward::json(path, request, payload, state, client)
                    },
                ))
                .default_service(web::to(errors::method_not_allowed)),
        );
    }
    cfg.service(
        web::resource("/v1/models")
            .route(web::get().to(models::list))
            .default_service(web::to(errors::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models/{model:.+}")
            .route(web::get().to(models::retrieve))
            .default_service(web::to(errors::method_not_allowed)),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health::liveness))
            .default_service(web::to(errors::method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics::scrape))
            .default_service(web::to(errors::method_not_allowed)),
    );
}
