//! OIDC bearer tokens on /v1 (`--oidc-v1`, like fast-openai-api-proxy): a token that verifies
//! (issuer, audience, expiry, a known key) becomes a caller shaped like a key entry, with owner
//! `oidc:<sub>`, so admission applies the same checks to it as to a key: the configured
//! default allowed models and limits, and the quota policies and overrides of that owner.
use std::sync::Arc;

use crate::access::key::{KeyDigest, KeyEntry, KeyLimits, KeySource, Patterns};
use crate::admin::settings::OidcV1Defaults;
use crate::oidc::{Oidc, OidcError};

/// Built once at start-up when `--oidc-v1` is on; shared by every worker.
pub struct OidcCallers {
    oidc: Arc<Oidc>,
    allowed_models: Option<Patterns>,
    limits: KeyLimits,
}

/// Every OIDC caller shares one `key` label in metrics: subjects are unbounded.
const METRIC_LABEL: &str = "oidc";

impl OidcCallers {
    pub fn new(oidc: Arc<Oidc>, defaults: &OidcV1Defaults) -> Self {
        Self {
            oidc,
            allowed_models: defaults
                .allowed_models
                .as_ref()
                .map(|models| Patterns::new(models.iter().map(String::as_str))),
            limits: defaults.limits,
        }
    }

    /// Whether a presented bearer is for this path at all: a JWT. Client keys never are, so they
    /// never reach the identity provider.
    pub fn is_token(bearer: &str) -> bool {
        Oidc::looks_like_jwt(bearer)
    }

    /// The caller `token` proves. A token whose key is cached never waits for the identity
    /// provider; an unknown `kid` waits for one bounded refresh, which no other request waits for.
    pub async fn caller(
        &self,
        token: &str,
        client: &awc::Client,
    ) -> Result<Arc<KeyEntry>, OidcError> {
        let user = self.oidc.verify(token, client).await?;
        let owner: Arc<str> = user.owner().into();
        Ok(Arc::new(KeyEntry {
            name: Arc::clone(&owner),
            // The owner's own counters for the default limits, apart from any key's digest.
            digest: KeyDigest::of(&format!("llmux-oidc-caller\0{owner}")),
            owner,
            // The token's `exp` was checked; the caller lasts as long as the token.
            expires_at: None,
            disabled: false,
            allowed_models: self.allowed_models.clone(),
            allowed_operations: None,
            limits: self.limits,
            source: KeySource::Named(Arc::from("oidc")),
            metric_label: Arc::from(METRIC_LABEL),
            usage_bucket: None,
            metrics: Default::default(),
        }))
    }
}
