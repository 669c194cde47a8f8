//! Who is calling the admin or self-service API. The admin token is compared in constant time;
//! an OIDC token must verify; a self-service key must be a live, usable llmux key. An arbitrary
//! bearer string is never an identity (fast-openai-api-proxy's self-service hole).
use actix_web::HttpRequest;

use crate::access::admin::{bearer, Admin, AdminRefusal};
use crate::admin::AccessApi;
use crate::errors::ApiError;
use crate::oidc::{Oidc, OidcUser};
use crate::store::keys::key_sha256;
use crate::store::records::KeyRecord;
use crate::store::{now, Actor};

#[derive(Debug, Clone)]
pub enum Caller {
    AdminToken,
    Oidc(OidcUser),
    Key(Box<KeyRecord>),
}

impl Caller {
    /// For the audit table: never a key.
    pub fn actor(&self) -> Actor {
        Actor(match self {
            Self::AdminToken => "admin-token".to_owned(),
            Self::Oidc(user) => user.owner(),
            Self::Key(key) => format!("key:{}", key.id),
        })
    }

    /// The owner identity self-service scopes to.
    pub fn owner(&self) -> String {
        match self {
            Self::AdminToken => "admin".to_owned(),
            Self::Oidc(user) => user.owner(),
            Self::Key(key) => key.owner(),
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized(
        "Unauthorized: send `Authorization: Bearer <token>` with a valid credential.".into(),
    )
}

async fn oidc_user(oidc: &Oidc, token: &str, client: &awc::Client) -> Result<OidcUser, ApiError> {
    oidc.verify(token, client).await.map_err(|error| {
        tracing::info!(error = %error, "OIDC token refused");
        unauthorized()
    })
}

/// An admin: whoever passes the admin gate (`access::admin`, shared with `/admin/*` and the
/// status page): the admin token (unless OIDC-only) or an OIDC token with an admin value. A
/// valid OIDC token without one is a 403 here, as in fast-openai-api-proxy.
pub async fn admin(
    request: &HttpRequest,
    api: &AccessApi,
    client: &awc::Client,
) -> Result<Caller, ApiError> {
    match api.gate.check(request.headers(), client).await {
        Ok(Admin::Token) => Ok(Caller::AdminToken),
        Ok(Admin::Oidc(user)) => Ok(Caller::Oidc(user)),
        Err(AdminRefusal::NotAnAdmin) => Err(ApiError::Forbidden(
            "Your token is valid but carries none of the admin roles or groups.".into(),
        )),
        Err(AdminRefusal::Unauthorized | AdminRefusal::NotConfigured) => Err(unauthorized()),
    }
}

/// A self-service caller: an OIDC user allowed to self-serve, or (unless OIDC-only) the holder
/// of a live, usable llmux key from the store.
pub async fn self_service(
    request: &HttpRequest,
    api: &AccessApi,
    client: &awc::Client,
) -> Result<Caller, ApiError> {
    let token = bearer(request.headers()).ok_or_else(unauthorized)?;
    if let Some(oidc) = api.oidc.as_deref().filter(|_| Oidc::looks_like_jwt(token)) {
        let user = oidc_user(oidc, token, client).await?;
        return if oidc.may_self_serve(&user) {
            Ok(Caller::Oidc(user))
        } else {
            Err(ApiError::Forbidden(
                "Your token is valid but carries none of the self-service roles or groups.".into(),
            ))
        };
    }
    // `Disabled` and `OidcOnly` accept no keys.
    if !api.settings.self_service.accepts_keys() {
        return Err(unauthorized());
    }
    let snapshot = api.store.snapshot();
    match snapshot.key_by_digest(&key_sha256(token)) {
        Some(key) if key.is_usable_at(now()) => Ok(Caller::Key(Box::new(key.clone()))),
        _ => Err(unauthorized()),
    }
}
