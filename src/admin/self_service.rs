//! Self-service API handlers: a caller proven by OIDC or by a live llmux key manages only the
//! keys of its own owner identity. A key minted with a key inherits that key's restrictions and
//! expiry, so self-service never widens what its caller may do.
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::admin::auth::{self, Caller};
use crate::admin::handlers::usage_of;
use crate::admin::types::{
    key_name, parse_body, parse_time, read_body, KeyCreated, KeyRead, SelfServiceKeyCreate,
};
use crate::admin::AccessApi;
use crate::errors::ApiError;
use crate::store::keys::NewKey;
use crate::store::records::KeyLimits;

type Api = web::Data<AccessApi>;
type Client = web::Data<awc::Client>;

/// Live keys one owner may hold through self-service.
pub const MAX_KEYS_PER_OWNER: usize = 100;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "scope": "self-service"}))
}

pub async fn list_keys(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::self_service(&request, &api, &client).await?;
    let keys = api.store.list_keys(Some(caller.owner())).await?;
    Ok(HttpResponse::Ok().json(keys.iter().map(KeyRead::from).collect::<Vec<_>>()))
}

pub async fn create_key(
    request: HttpRequest,
    payload: web::Payload,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::self_service(&request, &api, &client).await?;
    let body = read_body(payload).await?;
    let create: SelfServiceKeyCreate = parse_body(&body)?;
    let name = key_name(&create.name)?;
    api.refuse_file_key_name(&name)?;
    let requested_expiry = create
        .expires_at
        .as_deref()
        .map(|value| parse_time(value, "expires_at"))
        .transpose()?;
    let owner = caller.owner();
    if api.store.list_keys(Some(owner.clone())).await?.len() >= MAX_KEYS_PER_OWNER {
        return Err(ApiError::Forbidden(format!(
            "You already hold {MAX_KEYS_PER_OWNER} keys: revoke one first."
        )));
    }
    let mut limits = match &caller {
        Caller::Key(key) => key.limits.clone(),
        Caller::Oidc(_) | Caller::AdminToken => KeyLimits::default(),
    };
    limits.disabled = false;
    limits.expires_at = match (limits.expires_at, requested_expiry) {
        (Some(inherited), Some(requested)) => Some(inherited.min(requested)),
        (inherited, requested) => inherited.or(requested),
    };
    let (record, key) = api
        .store
        .create_key(
            &caller.actor(),
            NewKey {
                name,
                owner_id: Some(owner),
                limits,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(KeyCreated {
        key: KeyRead::from(&record),
        api_key: key,
    }))
}

pub async fn revoke_key(
    request: HttpRequest,
    path: web::Path<String>,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::self_service(&request, &api, &client).await?;
    let id = path.into_inner();
    // Another owner's key is "not found": ids of others are never confirmed.
    if !api
        .store
        .revoke_key(&caller.actor(), id.clone(), Some(caller.owner()))
        .await?
    {
        return Err(ApiError::NotFound("API key not found.".into()));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "deleted", "key_id": id})))
}

/// The caller's keys with a default quota, each with its use in the current minute.
pub async fn usage(
    request: HttpRequest,
    api: Api,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::self_service(&request, &api, &client).await?;
    let mut usage = Vec::new();
    for key in api.store.list_keys(Some(caller.owner())).await? {
        if let Some(requests_per_minute) = key.limits.requests_per_minute {
            usage.push(usage_of(&api, key.id, requests_per_minute).await?);
        }
    }
    Ok(HttpResponse::Ok().json(json!({"owner_id": caller.owner(), "keys": usage})))
}
