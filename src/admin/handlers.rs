//! Admin API handlers: authenticate, validate, call the store, answer fast-openai-api-proxy's shapes.
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::admin::auth::{self, Caller};
use crate::admin::settings::AdminMode;
use crate::admin::types::{
    method, normalize_path, parse_body, patched_limits, read_body, AdminKeyCreate, KeyCreated,
    KeyQuota, KeyQuotaRead, KeyRead, KeyUsageRead, OverrideFilter, ProtectedEndpointCreate,
    ProtectedEndpointRead, QuotaOverrideBody, QuotaOverrideRead, QuotaPolicyBody, QuotaPolicyRead,
};
use crate::admin::AccessApi;
use crate::errors::ApiError;
use crate::store::now;
use crate::store::records::WindowType;

type Api = web::Data<AccessApi>;
type Client = web::Data<awc::Client>;

async fn admin(request: &HttpRequest, api: &Api, client: &Client) -> Result<Caller, ApiError> {
    auth::admin(request, api, client).await
}

fn not_found(what: &str) -> ApiError {
    ApiError::NotFound(format!("{what} not found."))
}

/// The answer to a delete (or revoke) of `what` `id`: FOAP's `{"status": "deleted", field: id}`,
/// or 404 when nothing had that id.
fn deleted(found: bool, what: &str, field: &str, id: &str) -> Result<HttpResponse, ApiError> {
    match found {
        true => Ok(HttpResponse::Ok().json(json!({"status": "deleted", field: id}))),
        false => Err(not_found(what)),
    }
}

pub async fn health(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "scope": "admin"})))
}

pub async fn auth_config(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let settings = &api.settings;
    let oidc = settings.oidc.as_ref();
    Ok(HttpResponse::Ok().json(json!({
        "admin": {
            "enabled": settings.admin != AdminMode::Disabled,
            "mode": settings.admin.as_str(),
            "oidc_enabled": oidc.is_some_and(|oidc| !oidc.admin_values.is_empty()),
            "oidc_only": settings.admin == AdminMode::OidcOnly,
            "static_token_enabled": settings.admin_token.is_some() && settings.admin != AdminMode::OidcOnly,
        },
        "self_service": {
            "enabled": settings.self_service != crate::admin::settings::SelfServiceMode::Disabled,
            "mode": settings.self_service.as_str(),
            "oidc_enabled": oidc.is_some(),
            "oidc_only": settings.self_service == crate::admin::settings::SelfServiceMode::OidcOnly,
            "key_enabled": settings.self_service.accepts_keys(),
        },
        "claim_mappings": {
            "role_claim": oidc.map(|oidc| oidc.role_claim.as_str()),
            "group_claim": oidc.map(|oidc| oidc.group_claim.as_str()),
            "subject_claim": oidc.map(|oidc| oidc.subject_claim.as_str()),
            "admin_values": oidc.map(|oidc| oidc.admin_values.clone()).unwrap_or_default(),
            "self_service_values": oidc.map(|oidc| oidc.self_service_values.clone()).unwrap_or_default(),
        },
    })))
}

pub async fn list_keys(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let keys = api.store.list_keys(None).await?;
    Ok(HttpResponse::Ok().json(keys.iter().map(KeyRead::from).collect::<Vec<_>>()))
}

pub async fn create_key(
    request: HttpRequest,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let new_key = parse_body::<AdminKeyCreate>(&body)?.new_key()?;
    api.refuse_file_key_name(&new_key.name)?;
    let (record, key) = api.store.create_key(&caller.actor(), new_key).await?;
    Ok(HttpResponse::Ok().json(KeyCreated {
        key: KeyRead::from(&record),
        api_key: key,
    }))
}

pub async fn get_key(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let key = api
        .store
        .key(path.into_inner())
        .await?
        .ok_or_else(|| not_found("API key"))?;
    Ok(HttpResponse::Ok().json(KeyRead::from(&key)))
}

pub async fn update_key(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let id = path.into_inner();
    let key = api
        .store
        .key(id.clone())
        .await?
        .ok_or_else(|| not_found("API key"))?;
    let limits = patched_limits(&key.limits, &body)?;
    if !api
        .store
        .update_key_limits(&caller.actor(), id.clone(), limits)
        .await?
    {
        return Err(not_found("API key"));
    }
    let key = api
        .store
        .key(id)
        .await?
        .ok_or_else(|| not_found("API key"))?;
    Ok(HttpResponse::Ok().json(KeyRead::from(&key)))
}

pub async fn revoke_key(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let found = api
        .store
        .revoke_key(&caller.actor(), id.clone(), None)
        .await?;
    deleted(found, "API key", "key_id", &id)
}

pub async fn set_key_quota(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let quota: KeyQuota = parse_body(&body)?;
    if quota.requests_per_minute < 1 {
        return Err(ApiError::invalid_request(
            "`requests_per_minute` must be at least 1.",
            Some("requests_per_minute"),
        ));
    }
    let id = path.into_inner();
    let key = api
        .store
        .key(id.clone())
        .await?
        .ok_or_else(|| not_found("API key"))?;
    let mut limits = key.limits;
    limits.requests_per_minute = Some(quota.requests_per_minute);
    if !api
        .store
        .update_key_limits(&caller.actor(), id.clone(), limits)
        .await?
    {
        return Err(not_found("API key"));
    }
    Ok(HttpResponse::Ok().json(KeyQuotaRead {
        api_key_id: id,
        requests_per_minute: quota.requests_per_minute,
    }))
}

pub async fn get_key_quota(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let key = api
        .store
        .key(id.clone())
        .await?
        .ok_or_else(|| not_found("API key"))?;
    let requests_per_minute = key
        .limits
        .requests_per_minute
        .ok_or_else(|| not_found("Quota"))?;
    Ok(HttpResponse::Ok().json(KeyQuotaRead {
        api_key_id: id,
        requests_per_minute,
    }))
}

pub async fn key_usage(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let key = api
        .store
        .key(id.clone())
        .await?
        .ok_or_else(|| not_found("API key"))?;
    let requests_per_minute = key
        .limits
        .requests_per_minute
        .ok_or_else(|| not_found("Quota"))?;
    Ok(HttpResponse::Ok().json(usage_of(&api, id, requests_per_minute).await?))
}

/// A key's use of its default quota in the current minute. Admission counts a store key's
/// requests under the bucket `key:<id>`.
pub(crate) async fn usage_of(
    api: &AccessApi,
    id: String,
    requests_per_minute: i64,
) -> Result<KeyUsageRead, ApiError> {
    let at = now();
    let used = api
        .store
        .usage(format!("key:{id}"), WindowType::Minute, at)
        .await?
        .requests;
    Ok(KeyUsageRead {
        api_key_id: id,
        requests_per_minute,
        used,
        remaining: (requests_per_minute - used).max(0),
        reset_in_seconds: WindowType::Minute.start_of(at) + 60 - at,
    })
}

pub async fn list_protected_endpoints(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let endpoints = api.store.list_protected_endpoints().await?;
    Ok(HttpResponse::Ok().json(
        endpoints
            .iter()
            .map(ProtectedEndpointRead::from)
            .collect::<Vec<_>>(),
    ))
}

pub async fn create_protected_endpoint(
    request: HttpRequest,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let create: ProtectedEndpointCreate = parse_body(&body)?;
    let endpoint = api
        .store
        .create_protected_endpoint(
            &caller.actor(),
            normalize_path(&create.path, "path")?,
            method(&create.method)?,
        )
        .await?;
    Ok(HttpResponse::Ok().json(ProtectedEndpointRead::from(&endpoint)))
}

pub async fn delete_protected_endpoint(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let found = api
        .store
        .delete_protected_endpoint(&caller.actor(), id.clone())
        .await?;
    deleted(found, "Protected endpoint", "endpoint_id", &id)
}

pub async fn list_quota_policies(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let policies = api.store.list_quota_policies().await?;
    Ok(HttpResponse::Ok().json(
        policies
            .iter()
            .map(QuotaPolicyRead::from)
            .collect::<Vec<_>>(),
    ))
}

pub async fn create_quota_policy(
    request: HttpRequest,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let fields = parse_body::<QuotaPolicyBody>(&body)?.fields()?;
    let policy = api
        .store
        .create_quota_policy(&caller.actor(), fields)
        .await?;
    Ok(HttpResponse::Ok().json(QuotaPolicyRead::from(&policy)))
}

pub async fn update_quota_policy(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let fields = parse_body::<QuotaPolicyBody>(&body)?.fields()?;
    let policy = api
        .store
        .update_quota_policy(&caller.actor(), path.into_inner(), fields)
        .await?
        .ok_or_else(|| not_found("Quota policy"))?;
    Ok(HttpResponse::Ok().json(QuotaPolicyRead::from(&policy)))
}

pub async fn delete_quota_policy(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let found = api
        .store
        .delete_quota_policy(&caller.actor(), id.clone())
        .await?;
    deleted(found, "Quota policy", "policy_id", &id)
}

pub async fn list_quota_overrides(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    let filter = web::Query::<OverrideFilter>::from_query(request.query_string())
        .map_err(|error| {
            ApiError::invalid_request(format!("The query is not valid: {error}."), None)
        })?
        .into_inner();
    if filter.limit.is_some_and(|limit| limit < 1) {
        return Err(ApiError::invalid_request(
            "`limit` must be at least 1.",
            Some("limit"),
        ));
    }
    if filter.offset.is_some_and(|offset| offset < 0) {
        return Err(ApiError::invalid_request(
            "`offset` must be at least 0.",
            Some("offset"),
        ));
    }
    let at = now();
    let api_path = filter
        .api_path
        .as_deref()
        .map(|path| normalize_path(path, "api_path"))
        .transpose()?;
    let matching: Vec<QuotaOverrideRead> = api
        .store
        .list_quota_overrides()
        .await?
        .iter()
        .filter(|item| {
            filter
                .owner_id
                .as_ref()
                .is_none_or(|owner| &item.fields.owner_id == owner)
        })
        .filter(|item| {
            api_path
                .as_ref()
                .is_none_or(|path| &item.fields.api_path == path)
        })
        .filter(|item| {
            filter
                .model
                .as_ref()
                .is_none_or(|model| &item.fields.model == model)
        })
        .filter(|item| {
            filter
                .exempt
                .is_none_or(|exempt| item.fields.exempt == exempt)
        })
        .map(|item| QuotaOverrideRead::at(item, at))
        .filter(|item| !filter.active_only || item.active_now)
        .collect();
    let total = matching.len();
    let offset = usize::try_from(filter.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit = filter.limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    });
    let page: Vec<QuotaOverrideRead> = matching.into_iter().skip(offset).take(limit).collect();
    let mut response = HttpResponse::build(StatusCode::OK);
    response
        .insert_header(("X-Total-Count", total.to_string()))
        .insert_header(("X-Returned-Count", page.len().to_string()));
    if let Some(limit) = filter.limit {
        response.insert_header(("X-Limit", limit.to_string()));
    }
    if let Some(offset) = filter.offset {
        response.insert_header(("X-Offset", offset.to_string()));
    }
    Ok(response.json(page))
}

pub async fn create_quota_override(
    request: HttpRequest,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let fields = parse_body::<QuotaOverrideBody>(&body)?.fields()?;
    let created = api
        .store
        .create_quota_override(&caller.actor(), fields)
        .await?;
    Ok(HttpResponse::Ok().json(QuotaOverrideRead::at(&created, now())))
}

pub async fn update_quota_override(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let fields = parse_body::<QuotaOverrideBody>(&body)?.fields()?;
    let updated = api
        .store
        .update_quota_override(&caller.actor(), path.into_inner(), fields)
        .await?
        .ok_or_else(|| not_found("Quota override"))?;
    Ok(HttpResponse::Ok().json(QuotaOverrideRead::at(&updated, now())))
}

pub async fn delete_quota_override(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = admin(&request, &api, &client).await?;
    let id = path.into_inner();
    let found = api
        .store
        .delete_quota_override(&caller.actor(), id.clone())
        .await?;
    deleted(found, "Quota override", "override_id", &id)
}

/// `GET /api/admin/audit?limit=N`: the newest changes first.
pub async fn audit(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    admin(&request, &api, &client).await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        limit: Option<i64>,
    }
    let query = web::Query::<Query>::from_query(request.query_string()).map_err(|error| {
        ApiError::invalid_request(format!("The query is not valid: {error}."), None)
    })?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = api.store.audit(limit).await?;
    Ok(HttpResponse::Ok().json(
        entries
            .iter()
            .map(|entry| {
                json!({
                    "at": entry.at,
                    "actor": entry.actor,
                    "action": entry.action,
                    "target": entry.target,
                    "detail": serde_json::from_str::<serde_json::Value>(&entry.detail).unwrap_or_default(),
                })
            })
            .collect::<Vec<_>>(),
    ))
}
