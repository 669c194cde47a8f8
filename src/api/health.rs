//! Liveness: answers without touching any upstream.
use actix_web::HttpResponse;

pub async fn liveness() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}
