//! Request and response bodies of the admin and self-service APIs: fast-openai-api-proxy's
//! shapes, plus llmux's key fields named as in key files. Requests are strict (an unknown or
//! misspelled member is a 400 naming it: a silently ignored `allowed_model` would widen access).
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::errors::ApiError;
use crate::store::records::{
    KeyLimits, KeyRecord, ProtectedEndpoint, QuotaOverride, QuotaOverrideFields, QuotaPolicy,
    QuotaPolicyFields, WindowType,
};

/// Operation names a key may be limited to (the shared key model's list).
pub const OPERATIONS: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "moderations",
    "responses",
    "images",
    "audio_speech",
    "audio_transcriptions",
    "audio_translations",
];

/// `POST /api/admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKeyCreate {
    pub name: String,
    pub owner_id: Option<String>,
    pub expires_at: Option<String>,
    pub disabled: Option<bool>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_operations: Option<Vec<String>>,
    pub requests_per_minute: Option<i64>,
    pub requests_per_hour: Option<i64>,
    pub requests_per_day: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub tokens_per_day: Option<i64>,
    pub max_concurrent_requests: Option<i64>,
    pub monthly_token_budget: Option<i64>,
}

/// `POST /api/keys`: a caller names the key and may shorten its life; everything else is
/// inherited (see `self_service.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfServiceKeyCreate {
    pub name: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KeyRead {
    pub id: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub masked_key: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_operations: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_token_budget: Option<i64>,
}

/// The one answer that holds a key: its creation.
#[derive(Debug, Serialize)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub key: KeyRead,
    pub api_key: String,
}

impl From<&KeyRecord> for KeyRead {
    fn from(record: &KeyRecord) -> Self {
        let limits = &record.limits;
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            owner_id: record.owner_id.clone(),
            masked_key: record.masked_key(),
            created_at: record.created_at,
            expires_at: limits.expires_at.map(format_time),
            disabled: limits.disabled,
            allowed_models: limits.allowed_models.clone(),
            allowed_operations: limits.allowed_operations.clone(),
            requests_per_minute: limits.requests_per_minute,
            requests_per_hour: limits.requests_per_hour,
            requests_per_day: limits.requests_per_day,
            tokens_per_minute: limits.tokens_per_minute,
            tokens_per_day: limits.tokens_per_day,
            max_concurrent_requests: limits.max_concurrent_requests,
            monthly_token_budget: limits.monthly_token_budget,
        }
    }
}

/// `PATCH /api/admin/keys/{id}`: the members given replace the key's (`null` clears one); the
/// key's name and owner stay.
pub fn patched_limits(current: &KeyLimits, patch: &[u8]) -> Result<KeyLimits, ApiError> {
    let patch: serde_json::Map<String, serde_json::Value> = parse_body(patch)?;
    if let Some(fixed) = ["name", "owner_id"]
        .iter()
        .find(|name| patch.contains_key(**name))
    {
        return Err(invalid(
            format!("`{fixed}` cannot be changed: create a new key instead."),
            if *fixed == "name" { "name" } else { "owner_id" },
        ));
    }
    let mut merged = serde_json::json!({
        "name": "unchanged",
        "expires_at": current.expires_at.map(format_time),
        "disabled": current.disabled,
        "allowed_models": current.allowed_models,
        "allowed_operations": current.allowed_operations,
        "requests_per_minute": current.requests_per_minute,
        "requests_per_hour": current.requests_per_hour,
        "requests_per_day": current.requests_per_day,
        "tokens_per_minute": current.tokens_per_minute,
        "tokens_per_day": current.tokens_per_day,
        "max_concurrent_requests": current.max_concurrent_requests,
        "monthly_token_budget": current.monthly_token_budget,
    });
    if let Some(object) = merged.as_object_mut() {
        object.extend(patch);
    }
    let merged: AdminKeyCreate = serde_json::from_value(merged).map_err(|error| {
        ApiError::invalid_request(format!("The request body is not valid: {error}."), None)
    })?;
    merged.limits()
}

/// `PUT /api/admin/keys/{id}/quota`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuota {
    pub requests_per_minute: i64,
}

#[derive(Debug, Serialize)]
pub struct KeyQuotaRead {
    pub api_key_id: String,
    pub requests_per_minute: i64,
}

#[derive(Debug, Serialize)]
pub struct KeyUsageRead {
    pub api_key_id: String,
    pub requests_per_minute: i64,
    pub used: i64,
    pub remaining: i64,
    pub reset_in_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedEndpointCreate {
    pub path: String,
    pub method: String,
}

#[derive(Debug, Serialize)]
pub struct ProtectedEndpointRead {
    pub id: String,
    pub path: String,
    pub method: String,
}

impl From<&ProtectedEndpoint> for ProtectedEndpointRead {
    fn from(endpoint: &ProtectedEndpoint) -> Self {
        Self {
            id: endpoint.id.clone(),
            path: endpoint.path.clone(),
            method: endpoint.method.clone(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `POST /api/admin/quota-policies` and `PUT .../{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaPolicyBody {
    pub api_path: String,
    pub model: String,
    pub window_type: String,
    pub request_limit: i64,
    #[serde(default = "default_true")]
    pub enforce_per_user: bool,
}

#[derive(Debug, Serialize)]
pub struct QuotaPolicyRead {
    pub id: String,
    pub api_path: String,
    pub model: String,
    pub window_type: &'static str,
    pub request_limit: i64,
    pub enforce_per_user: bool,
    pub created_at: i64,
}

impl From<&QuotaPolicy> for QuotaPolicyRead {
    fn from(policy: &QuotaPolicy) -> Self {
        Self {
            id: policy.id.clone(),
            api_path: policy.fields.api_path.clone(),
            model: policy.fields.model.clone(),
            window_type: policy.fields.window_type.as_str(),
            request_limit: policy.fields.request_limit,
            enforce_per_user: policy.fields.enforce_per_user,
            created_at: policy.created_at,
        }
    }
}

/// `POST /api/admin/quota-overrides` and `PUT .../{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrideBody {
    pub api_path: String,
    pub model: String,
    pub owner_id: String,
    pub window_type: String,
    pub request_limit: i64,
    #[serde(default)]
    pub exempt: bool,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct QuotaOverrideRead {
    pub id: String,
    pub api_path: String,
    pub model: String,
    pub owner_id: String,
    pub window_type: &'static str,
    pub request_limit: i64,
    pub exempt: bool,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub created_at: i64,
    pub active_now: bool,
    pub window_state: &'static str,
}

impl QuotaOverrideRead {
    pub fn at(quota_override: &QuotaOverride, now: i64) -> Self {
        let fields = &quota_override.fields;
        let state = fields.window_state_at(now);
        Self {
            id: quota_override.id.clone(),
            api_path: fields.api_path.clone(),
            model: fields.model.clone(),
            owner_id: fields.owner_id.clone(),
            window_type: fields.window_type.as_str(),
            request_limit: fields.request_limit,
            exempt: fields.exempt,
            starts_at: fields.starts_at,
            ends_at: fields.ends_at,
            created_at: quota_override.created_at,
            active_now: state == crate::store::records::WindowState::Active,
            window_state: state.as_str(),
        }
    }
}

/// The query of `GET /api/admin/quota-overrides`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFilter {
    pub owner_id: Option<String>,
    pub api_path: Option<String>,
    pub model: Option<String>,
    pub exempt: Option<bool>,
    #[serde(default)]
    pub active_only: bool,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Largest admin or self-service request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads a request body of at most [`MAX_BODY_BYTES`] (the pipeline's reader in `api/forward.rs`
/// is private to the proxy path and bounded by `--max-body-bytes`, far too much here).
pub async fn read_body(mut payload: actix_web::web::Payload) -> Result<bytes::Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| ApiError::BadPayload(error.to_string()))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON request body into `T`, naming what is wrong.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::invalid_request(format!("The request body is not valid: {error}."), None)
    })
}

fn invalid(message: String, param: &'static str) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn text(value: &str, param: &'static str, max_chars: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > max_chars || trimmed.chars().any(char::is_control) {
        return Err(invalid(
            format!("`{param}` must be 1 to {max_chars} characters without control characters."),
            param,
        ));
    }
    Ok(trimmed.to_owned())
}

pub fn key_name(value: &str) -> Result<String, ApiError> {
    text(value, "name", 128)
}

pub fn owner_id(value: &str) -> Result<String, ApiError> {
    text(value, "owner_id", 128)
}

fn positive(value: Option<i64>, param: &'static str) -> Result<Option<i64>, ApiError> {
    match value {
        Some(number) if number < 1 => Err(invalid(format!("`{param}` must be at least 1."), param)),
        other => Ok(other),
    }
}

/// RFC 3339 (`2027-01-01T00:00:00Z`), as in key files.
pub fn parse_time(value: &str, param: &'static str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| {
            invalid(
                format!("`{param}` must be an RFC 3339 time such as 2027-01-01T00:00:00Z."),
                param,
            )
        })
}

pub fn format_time(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| seconds.to_string())
}

impl AdminKeyCreate {
    /// The validated key to create.
    pub fn new_key(&self) -> Result<crate::store::keys::NewKey, ApiError> {
        Ok(crate::store::keys::NewKey {
            name: key_name(&self.name)?,
            owner_id: self.owner_id.as_deref().map(owner_id).transpose()?,
            limits: self.limits()?,
        })
    }

    /// The validated limits.
    pub fn limits(&self) -> Result<KeyLimits, ApiError> {
        let allowed_models = match &self.allowed_models {
            Some(patterns) => {
                let patterns: Vec<String> = patterns.iter().map(|p| p.trim().to_owned()).collect();
                if patterns.iter().any(String::is_empty) {
                    return Err(invalid(
                        "`allowed_models` holds glob patterns of model names; an empty one matches nothing.".into(),
                        "allowed_models",
                    ));
                }
                Some(patterns)
            }
            None => None,
        };
        if let Some(unknown) = self
            .allowed_operations
            .iter()
            .flatten()
            .find(|operation| !OPERATIONS.contains(&operation.as_str()))
        {
            return Err(invalid(
                format!(
                    "`allowed_operations` holds `{unknown}`, which is not an operation; known ones: {}.",
                    OPERATIONS.join(", ")
                ),
                "allowed_operations",
            ));
        }
        Ok(KeyLimits {
            expires_at: self
                .expires_at
                .as_deref()
                .map(|value| parse_time(value, "expires_at"))
                .transpose()?,
            disabled: self.disabled.unwrap_or(false),
            allowed_models,
            allowed_operations: self.allowed_operations.clone(),
            requests_per_minute: positive(self.requests_per_minute, "requests_per_minute")?,
            requests_per_hour: positive(self.requests_per_hour, "requests_per_hour")?,
            requests_per_day: positive(self.requests_per_day, "requests_per_day")?,
            tokens_per_minute: positive(self.tokens_per_minute, "tokens_per_minute")?,
            tokens_per_day: positive(self.tokens_per_day, "tokens_per_day")?,
            max_concurrent_requests: positive(
                self.max_concurrent_requests,
                "max_concurrent_requests",
            )?,
            monthly_token_budget: positive(self.monthly_token_budget, "monthly_token_budget")?,
        })
    }
}

pub fn window_type(value: &str) -> Result<WindowType, ApiError> {
    WindowType::parse(value.trim()).ok_or_else(|| {
        invalid(
            "`window_type` must be minute, hour or day.".into(),
            "window_type",
        )
    })
}

/// A leading `/`, no trailing `/`, no query.
pub fn normalize_path(value: &str, param: &'static str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty()
        || trimmed.contains(['?', '#'])
        || trimmed.chars().any(char::is_whitespace)
    {
        return Err(invalid(
            format!("`{param}` must be a URL path such as /v1/chat/completions."),
            param,
        ));
    }
    let with_slash = if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    };
    let normalized = with_slash.trim_end_matches('/');
    Ok(if normalized.is_empty() {
        "/".to_owned()
    } else {
        normalized.to_owned()
    })
}

pub fn method(value: &str) -> Result<String, ApiError> {
    let upper = value.trim().to_ascii_uppercase();
    if upper.is_empty() || upper.len() > 10 || !upper.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(invalid(
            "`method` must be an HTTP method such as POST.".into(),
            "method",
        ));
    }
    Ok(upper)
}

impl QuotaPolicyBody {
    pub fn fields(&self) -> Result<QuotaPolicyFields, ApiError> {
        Ok(QuotaPolicyFields {
            api_path: normalize_path(&self.api_path, "api_path")?,
            model: text(&self.model, "model", 256)?,
            window_type: window_type(&self.window_type)?,
            request_limit: positive(Some(self.request_limit), "request_limit")?.unwrap_or(1),
            enforce_per_user: self.enforce_per_user,
        })
    }
}

impl QuotaOverrideBody {
    pub fn fields(&self) -> Result<QuotaOverrideFields, ApiError> {
        if let (Some(starts_at), Some(ends_at)) = (self.starts_at, self.ends_at) {
            if ends_at <= starts_at {
                return Err(invalid(
                    "`ends_at` must be after `starts_at`.".into(),
                    "ends_at",
                ));
            }
        }
        Ok(QuotaOverrideFields {
            api_path: normalize_path(&self.api_path, "api_path")?,
            model: text(&self.model, "model", 256)?,
            owner_id: owner_id(&self.owner_id)?,
            window_type: window_type(&self.window_type)?,
            request_limit: positive(Some(self.request_limit), "request_limit")?.unwrap_or(1),
            exempt: self.exempt,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_path(input: &str, expected: Option<&str>) {
        assert_eq!(
            normalize_path(input, "path").ok().as_deref(),
            expected,
            "{input}"
        );
    }

    #[test]
    fn paths_are_normalized_like_fast_openai_api_proxy() {
        check_path("v1/chat/completions", Some("/v1/chat/completions"));
        check_path("/v1/embeddings/", Some("/v1/embeddings"));
        check_path("/", Some("/"));
        check_path("", None);
        check_path("/v1/x?y=1", None);
    }

    #[test]
    fn key_fields_are_validated_and_unknown_ones_refused() {
        let parsed: Result<AdminKeyCreate, _> =
            parse_body(br#"{"name":"a","allowed_model":["x"]}"#);
        let message = parsed.unwrap_err().to_string();
        assert!(message.contains("allowed_model"), "{message}");
        let create: AdminKeyCreate = parse_body(
            br#"{"name":"a","expires_at":"2027-01-01T00:00:00Z","allowed_operations":["chat"],"requests_per_minute":5}"#,
        )
        .unwrap();
        let limits = create.limits().unwrap();
        assert_eq!(limits.expires_at, Some(1_798_761_600));
        assert_eq!(format_time(1_798_761_600), "2027-01-01T00:00:00Z");
        let bad: AdminKeyCreate =
            parse_body(br#"{"name":"a","allowed_operations":["chats"]}"#).unwrap();
        assert!(bad.limits().unwrap_err().to_string().contains("chats"));
        let zero: AdminKeyCreate = parse_body(br#"{"name":"a","requests_per_minute":0}"#).unwrap();
        assert!(zero.limits().is_err());
        assert!(key_name(" ").is_err());
        assert!(key_name(&"x".repeat(129)).is_err());
        assert!(method("post").unwrap() == "POST" && method("PO ST").is_err());
    }
}
