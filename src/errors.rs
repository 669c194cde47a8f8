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
    #[error("The model `{}` does not exist or you do not have access to it. GET /v1/models lists the models this server offers.", echo(model))]
    UnknownModel { model: String },
    #[error(
        "The model `{}` is not served on /{path}. It serves: {served}.",
        echo(model)
    )]
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
    #[error(
        "/{path} does not take protocol upgrades (WebSocket): send it as a plain HTTP request."
    )]
    UpgradeNotSupported { path: &'static str },
    #[error("The client sent nothing of the request body for {}s (--client-body-timeout).", timeout.as_secs_f64())]
    ClientBodyTimeout { timeout: Duration },
    #[error("The upstream of provider `{provider}` could not be reached: {cause}")]
    UpstreamUnreachable { provider: String, cause: String },
    #[error("The upstream of provider `{provider}` refused the realtime session (HTTP {upstream_status}).")]
    UpstreamRefusedSession {
        provider: String,
        /// The upstream's status when it is a 4xx or 5xx, 502 otherwise.
        status: StatusCode,
        upstream_status: u16,
    },
    #[error("The upstream of provider `{provider}` did not answer within {}s.", timeout.as_secs_f64())]
    UpstreamTimeout { provider: String, timeout: Duration },
    #[error("Internal error: {0}")]
    Internal(String),
    #[error(
        "No response with id '{id}' was created through this server (or it was forgotten since)."
    )]
    UnknownResponse { id: String },
    #[error(
        "The image `{}` of model `{}` does not exist or has expired.",
        echo(id),
        echo(model)
    )]
    ImageNotFound { model: String, id: String },
    #[error("No provider of this server serves the {family} family (/{path}). To serve it, add \"families\": [\"{family}\"] to a provider in a config file.")]
    FamilyNotServed {
        family: &'static str,
        path: &'static str,
    },
    /// A missing, unknown, expired or disabled client key (access control); never names the key.
    #[error("{reason}")]
    InvalidApiKey { reason: &'static str },
    #[error("This API key may not call {operation}.")]
    PermissionDenied { operation: &'static str },
    /// Over a limit: `Retry-After` (whole seconds, at least 1) goes with it.
    #[error("Rate limit reached ({limit}). Please try again in {}s.", retry_after_seconds(*retry_after))]
    RateLimited {
        retry_after: Duration,
        limit: &'static str,
    },
    #[error(
        "The admin API needs an admin token: set LLMUX_ADMIN_TOKEN or LLMUX_ADMIN_TOKEN_FILE."
    )]
    AdminNotConfigured,
    #[error("Access control could not check this request's limits: {0}")]
    AccessUnavailable(String),
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

/// Longest client-sent text llmux echoes in an error or a log line.
pub const MAX_ECHO_BYTES: usize = 256;

/// `text` as llmux echoes it: cut to `MAX_ECHO_BYTES` (at a character boundary) with an ellipsis
/// (issue 20: a 1 MB model name gave a 1 MB error body and a 1 MB log line).
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ECHO_BYTES {
        return text.into();
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
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
            Self::UpgradeNotSupported { .. } => {
                ("invalid_request_error", None, Some("upgrade_not_supported"))
            }
            Self::ClientBodyTimeout { .. } => {
                ("invalid_request_error", None, Some("request_timeout"))
            }
            Self::HeadersTooLarge { .. } => {
                ("invalid_request_error", None, Some("headers_too_large"))
            }
            Self::UpstreamUnreachable { .. } => {
                ("upstream_error", None, Some("upstream_unreachable"))
            }
            Self::UpstreamTimeout { .. } => ("upstream_error", None, Some("upstream_timeout")),
            Self::UpstreamRefusedSession { .. } => {
                ("upstream_error", None, Some("upstream_refused_session"))
            }
            Self::Internal(_) => ("server_error", None, Some("internal_error")),
            Self::UnknownResponse { .. } => ("invalid_request_error", None, Some("not_found")),
            Self::ImageNotFound { .. } => ("invalid_request_error", None, Some("image_not_found")),
            Self::FamilyNotServed { .. } => {
                ("invalid_request_error", None, Some("family_not_served"))
            }
            Self::InvalidApiKey { .. } => ("invalid_request_error", None, Some("invalid_api_key")),
            Self::PermissionDenied { .. } => {
                ("invalid_request_error", None, Some("permission_denied"))
            }
            Self::RateLimited { .. } => ("requests", None, Some("rate_limit_exceeded")),
            Self::AdminNotConfigured => ("server_error", None, Some("admin_not_configured")),
            Self::AccessUnavailable(_) => ("server_error", None, Some("access_unavailable")),
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
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::BadPayload(_)
            | Self::UpgradeNotSupported { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownModel { .. } | Self::ModelNotOnPath { .. } | Self::UnknownRoute { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamRefusedSession { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnknownResponse { .. } => StatusCode::NOT_FOUND,
            Self::ImageNotFound { .. } | Self::FamilyNotServed { .. } => StatusCode::NOT_FOUND,
            Self::InvalidApiKey { .. } => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AdminNotConfigured | Self::AccessUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Self::RateLimited { retry_after, .. } = self {
            response.insert_header((header::RETRY_AFTER, retry_after_seconds(*retry_after)));
        }
        response.body(json)
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
        check(
            ApiError::InvalidApiKey { reason: "x" },
            401,
            Some("invalid_api_key"),
        );
        check(
            ApiError::PermissionDenied { operation: "chat" },
            403,
            Some("permission_denied"),
        );
        let limited = ApiError::RateLimited {
            retry_after: Duration::from_millis(1200),
            limit: "requests_per_minute",
        };
        assert_eq!(
            limited
                .error_response()
                .headers()
                .get("retry-after")
                .unwrap(),
            "2"
        );
        check(limited, 429, Some("rate_limit_exceeded"));
        check(
            ApiError::AdminNotConfigured,
            503,
            Some("admin_not_configured"),
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

    #[test]
    fn echoes_of_client_text_are_cut_at_a_character_boundary() {
        assert_eq!(echo("gpt-4o"), "gpt-4o");
        let long = "é".repeat(1000);
        let cut = echo(&long);
        assert!(cut.len() <= MAX_ECHO_BYTES + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        let message = ApiError::UnknownModel {
            model: "m".repeat(1 << 20),
        }
        .to_string();
        assert!(message.len() < 512, "{}", message.len());
    }
}
