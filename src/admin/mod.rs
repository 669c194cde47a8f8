//! The admin API (`/api/admin/...`) and the self-service API (`/api/...`): fast-openai-api-proxy's
//! paths and shapes over the access store, with OIDC or the admin token (admin) and OIDC or an
//! existing valid llmux key (self-service) proving who calls.
pub mod auth;
pub mod handlers;
pub mod self_service;
pub mod settings;
pub mod types;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::web;

use crate::access::admin::AdminGate;
use crate::access::table::AccessTable;
use crate::admin::settings::{AccessApiSettings, AdminMode, SelfServiceMode, SettingsError};
use crate::errors::{self, ApiError};
use crate::oidc::Oidc;
use crate::store::{Store, StoreError, StoreTimings, WhenUnreachable};

/// Built once at start-up, shared by every worker.
pub struct AccessApi {
    pub settings: AccessApiSettings,
    pub store: Store,
    pub oidc: Option<Arc<Oidc>>,
    /// The admin gate, shared with `/admin/*` and the status page.
    pub gate: Arc<AdminGate>,
    /// The key table, read to refuse a key name a key file already uses.
    pub keys: Arc<AccessTable>,
    /// Set by the first worker, which keeps the OIDC keys fresh.
    oidc_refresher: AtomicBool,
}

impl AccessApi {
    /// Opens the store (creating the SQLite file only now, since an API is on).
    pub fn start(
        settings: AccessApiSettings,
        keys: Arc<AccessTable>,
    ) -> Result<Self, SettingsError> {
        let store = Store::open(
            settings.store.clone(),
            StoreTimings::default(),
            WhenUnreachable::KeepTrying,
        )?;
        let oidc = settings.oidc.clone().map(|oidc| Arc::new(Oidc::new(oidc)));
        let oidc_admins = oidc
            .as_ref()
            .filter(|oidc| !oidc.settings().admin_values.is_empty())
            .filter(|_| matches!(settings.admin, AdminMode::Hybrid | AdminMode::OidcOnly));
        let token = settings
            .admin_token
            .clone()
            .filter(|_| settings.admin != AdminMode::OidcOnly);
        let gate = Arc::new(AdminGate::new(token, oidc_admins.cloned()));
        Ok(Self {
            settings,
            store,
            oidc,
            gate,
            keys,
            oidc_refresher: AtomicBool::new(false),
        })
    }
}

impl AccessApi {
    /// 409 when a key file already has a key named `name`: the key table would refuse the
    /// database version holding a second one (names the name only, never a key).
    pub fn refuse_file_key_name(&self, name: &str) -> Result<(), ApiError> {
        if self.keys.file_has_key_named(name) {
            return Err(ApiError::Conflict(format!(
                "A key file already has a key named `{name}`: choose another name."
            )));
        }
        Ok(())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { what } => ApiError::Conflict(format!("{what} already exists.")),
            StoreError::Unavailable(_)
            | StoreError::Timeout
            | StoreError::NotReady
            | StoreError::Stopped => {
                tracing::warn!(error = %error, "access store call failed");
                ApiError::StoreUnavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Mounts the APIs that are on, in each worker. `api` is shared by every worker; the first one
/// also runs the OIDC key refresher with its `client` (it stops with that worker).
pub fn configure(cfg: &mut web::ServiceConfig, api: &Arc<AccessApi>, client: &awc::Client) {
    cfg.app_data(web::Data::from(Arc::clone(api)));
    if let Some(oidc) = &api.oidc {
        if !api.oidc_refresher.swap(true, Ordering::AcqRel) {
            actix_web::rt::spawn(Arc::clone(oidc).keep_fresh(client.clone()));
        }
    }
    if api.settings.admin != AdminMode::Disabled {
        cfg.service(resource("/api/admin/health").route(web::get().to(handlers::health)))
            .service(resource("/api/admin/auth-config").route(web::get().to(handlers::auth_config)))
            .service(
                resource("/api/admin/keys")
                    .route(web::get().to(handlers::list_keys))
                    .route(web::post().to(handlers::create_key)),
            )
            .service(
                resource("/api/admin/keys/{id}")
                    .route(web::get().to(handlers::get_key))
                    .route(web::patch().to(handlers::update_key))
                    .route(web::delete().to(handlers::revoke_key)),
            )
            .service(
                resource("/api/admin/keys/{id}/quota")
                    .route(web::get().to(handlers::get_key_quota))
                    .route(web::put().to(handlers::set_key_quota)),
            )
            .service(
                resource("/api/admin/keys/{id}/usage").route(web::get().to(handlers::key_usage)),
            )
            .service(
                resource("/api/admin/protected-endpoints")
                    .route(web::get().to(handlers::list_protected_endpoints))
                    .route(web::post().to(handlers::create_protected_endpoint)),
            )
            .service(
                resource("/api/admin/protected-endpoints/{id}")
                    .route(web::delete().to(handlers::delete_protected_endpoint)),
            )
            .service(
                resource("/api/admin/quota-policies")
                    .route(web::get().to(handlers::list_quota_policies))
                    .route(web::post().to(handlers::create_quota_policy)),
            )
            .service(
                resource("/api/admin/quota-policies/{id}")
                    .route(web::put().to(handlers::update_quota_policy))
                    .route(web::delete().to(handlers::delete_quota_policy)),
            )
            .service(
                resource("/api/admin/quota-overrides")
                    .route(web::get().to(handlers::list_quota_overrides))
                    .route(web::post().to(handlers::create_quota_override)),
            )
            .service(
                resource("/api/admin/quota-overrides/{id}")
                    .route(web::put().to(handlers::update_quota_override))
                    .route(web::delete().to(handlers::delete_quota_override)),
            )
            .service(resource("/api/admin/audit").route(web::get().to(handlers::audit)));
    }
    if api.settings.self_service != SelfServiceMode::Disabled {
        cfg.service(resource("/api/health").route(web::get().to(self_service::health)))
            .service(
                resource("/api/keys")
                    .route(web::get().to(self_service::list_keys))
                    .route(web::post().to(self_service::create_key)),
            )
            .service(resource("/api/keys/{id}").route(web::delete().to(self_service::revoke_key)))
            .service(resource("/api/usage").route(web::get().to(self_service::usage)));
    }
}

/// A URL of these APIs: any method it has no route for is a 405 in the OpenAI shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(errors::method_not_allowed))
}
