//! `ApiError`: everything llmux itself refuses, rendered as an OpenAI error body. The only status table.
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

/// An error llmux answers itself. Variants are named for what the client sees.
///
/// Upstream 4xx/5xx answers are not `ApiError`s: they are passed through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error(
        "We could not parse the JSON body of your request ({source}). The body must be a JSON object."
    )]
    InvalidJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("The model `{model}` does not exist or you do not have access to it. GET /v1/models lists the models this server offers.")]
    UnknownModel { model: String },
    #[error("The model `{model}` is not served on /{path}. It serves: {served}.")]
    ModelNotOnPath {
        model: String,
        path: String,
        served: String,
    },
    #[error("Unknown request URL: {method} {path}. Please check the URL for typos.")]
    UnknownRoute { method: String, path: String },
    #[error("Method {method} is not allowed on {path}.")]
    MethodNotAllowed { method: String, path: String },
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error("The request headers are too large: at most {max_count} headers of {max_bytes} bytes in all are accepted.")]
    HeadersTooLarge { max_bytes: usize, max_count: usize },
    #[error("Could not read the request body: {0}")]
    BadPayload(String),
    #[error("The upstream of provider `{provider}` could not be reached: {cause}")]
    UpstreamUnreachable { provider: String, cause: String },
    #[error("The upstream of provider `{provider}` did not answer within {}s.", timeout.as_secs_f64())]
    UpstreamTimeout { provider: String, timeout: Duration },
    #[error("Internal error: {0}")]
    Internal(String),
    #[error(
        "No response with id '{id}' was created through this server (or it was forgotten since)."
    )]
    UnknownResponse { id: String },
    #[error("The image `{id}` of model `{model}` does not exist or has expired.")]
    ImageNotFound { model: String, id: String },
    // The admin and self-service APIs (`admin/`).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("The access store is unavailable; requests to /v1 are still admitted from the last snapshot. Try again shortly.")]
    StoreUnavailable,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    /// `(type, param, code)` of the OpenAI error object.
    fn parts(&self) -> (&'static str, Option<&'static str>, Option<&'static str>) {
        match self {
            Self::InvalidRequest { param, .. } => ("invalid_request_error", *param, None),
            Self::InvalidJson { .. } => ("invalid_request_error", None, Some("invalid_json")),
            Self::UnknownModel { .. } => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            Self::ModelNotOnPath { .. } => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_supported"),
            ),
            Self::UnknownRoute { .. } => ("invalid_request_error", None, Some("unknown_url")),
            Self::MethodNotAllowed { .. } => {
                ("invalid_request_error", None, Some("method_not_allowed"))
            }
            Self::PayloadTooLarge { .. } => {
                ("invalid_request_error", None, Some("payload_too_large"))
            }
            Self::BadPayload(_) => ("invalid_request_error", None, Some("bad_payload")),
            Self::HeadersTooLarge { .. } => {
                ("invalid_request_error", None, Some("headers_too_large"))
            }
            Self::UpstreamUnreachable { .. } => {
                ("upstream_error", None, Some("upstream_unreachable"))
            }
            Self::UpstreamTimeout { .. } => ("upstream_error", None, Some("upstream_timeout")),
            Self::Internal(_) => ("server_error", None, Some("internal_error")),
            Self::UnknownResponse { .. } => ("invalid_request_error", None, Some("not_found")),
            Self::ImageNotFound { .. } => ("invalid_request_error", None, Some("image_not_found")),
            Self::Unauthorized(_) => ("authentication_error", None, Some("unauthorized")),
            Self::Forbidden(_) => ("permission_error", None, Some("forbidden")),
            Self::NotFound(_) => ("invalid_request_error", None, Some("not_found")),
            Self::Conflict(_) => ("invalid_request_error", None, Some("conflict")),
            Self::StoreUnavailable => ("server_error", None, Some("store_unavailable")),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidJson { .. } | Self::BadPayload(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownModel { .. } | Self::ModelNotOnPath { .. } | Self::UnknownRoute { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnknownResponse { .. } => StatusCode::NOT_FOUND,
            Self::ImageNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, param, code) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        HttpResponse::build(self.status_code())
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(json)
    }
}

/// Default service of the app: an unknown URL is a 404 in the OpenAI shape.
pub async fn unknown_route(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::UnknownRoute {
        method: request.method().to_string(),
        path: request.path().to_owned(),
    })
}

/// Default service of each resource: a known URL with the wrong method is a 405.
pub async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.path().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn check(error: ApiError, status: u16, code: Option<&str>) {
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), status);
        let bytes = response.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json["error"]["message"].is_string());
        assert!(json["error"]["type"].is_string());
        assert_eq!(json["error"]["code"].as_str(), code);
    }

    #[test]
    fn every_variant_renders_the_openai_shape_with_its_status() {
        check(ApiError::invalid_request("x", Some("model")), 400, None);
        check(
            ApiError::UnknownModel { model: "m".into() },
            404,
            Some("model_not_found"),
        );
        check(
            ApiError::MethodNotAllowed {
                method: "GET".into(),
                path: "/v1/embeddings".into(),
            },
            405,
            Some("method_not_allowed"),
        );
        check(
            ApiError::PayloadTooLarge { limit: 1 },
            413,
            Some("payload_too_large"),
        );
        check(
            ApiError::UpstreamUnreachable {
                provider: "p".into(),
                cause: "refused".into(),
            },
            502,
            Some("upstream_unreachable"),
        );
        check(
            ApiError::UpstreamTimeout {
                provider: "p".into(),
                timeout: Duration::from_secs(1),
            },
            504,
            Some("upstream_timeout"),
        );
    }

    #[test]
    fn unknown_model_message_names_the_model_and_the_listing() {
        let message = ApiError::UnknownModel {
            model: "gpt-9".into(),
        }
        .to_string();
        assert!(message.contains("`gpt-9`"));
        assert!(message.contains("GET /v1/models"));
    }
}
