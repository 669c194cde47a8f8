//! OIDC bearer tokens for the admin and self-service APIs: issuer discovery and the JWKS are
//! fetched asynchronously (awc, on the caller's worker) and cached; a token whose key is cached
//! never waits for the identity provider, an unknown `kid` triggers one refresh for everyone
//! (single flight, at most one per `min_refresh_interval`), bounded by `fetch_timeout`.
pub mod callers;
pub mod claims;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::oidc::claims::{claim_strings, claim_text};

/// What the admin sets (see `admin::settings`).
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Must equal the tokens' `iss`; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Skips discovery when set.
    pub jwks_url: Option<String>,
    /// Checked against `aud` when set.
    pub audience: Option<String>,
    /// Claim names, top-level or a dotted path (`realm_access.roles`).
    pub role_claim: String,
    pub group_claim: String,
    pub subject_claim: String,
    /// A caller whose roles or groups hold one of these is an admin.
    pub admin_values: Vec<String>,
    /// A caller whose roles or groups hold one of these may use self-service; empty: anyone
    /// with a valid token.
    pub self_service_values: Vec<String>,
    /// Bounds each discovery or JWKS fetch.
    pub fetch_timeout: Duration,
    /// Unknown `kid`s trigger at most one fetch per this interval.
    pub min_refresh_interval: Duration,
    /// The JWKS is fetched again this often, so keys the provider dropped stop verifying.
    pub jwks_max_age: Duration,
}

/// A caller proven by a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcUser {
    pub subject: String,
    /// Role and group values, together.
    pub values: Vec<String>,
}

impl OidcUser {
    /// Owner identity of OIDC callers.
    pub fn owner(&self) -> String {
        format!("oidc:{}", self.subject)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the bearer token is not a JWT")]
    NotAJwt,
    #[error("tokens signed with {0:?} are not accepted (RS256/384/512, ES256/384 are)")]
    UnsupportedAlgorithm(Algorithm),
    #[error("no key of the identity provider matches the token")]
    UnknownKey,
    #[error("the token is not valid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the token has no `{0}` claim")]
    MissingSubject(String),
    #[error("the identity provider could not be reached: {0}")]
    ProviderUnreachable(String),
}

pub struct Oidc {
    settings: OidcSettings,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct KeySet {
    generation: u64,
    keys: Vec<CachedKey>,
}

struct CachedKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    algorithm: Option<Algorithm>,
    family: KeyFamily,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    P256,
    P384,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// The largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

impl Oidc {
    pub fn new(settings: OidcSettings) -> Self {
        Self {
            settings,
            keys: RwLock::default(),
            refresh: tokio::sync::Mutex::default(),
        }
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Whether `token` looks like a JWT at all (three dot-separated parts): other bearer strings
    /// (llmux keys, the admin token) never reach the identity provider.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && jsonwebtoken::decode_header(token).is_ok()
    }

    /// Verifies signature, issuer, audience, expiry; reads subject, roles and groups.
    pub async fn verify(&self, token: &str, client: &awc::Client) -> Result<OidcUser, OidcError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::NotAJwt)?;
        let family = family_of(header.alg).ok_or(OidcError::UnsupportedAlgorithm(header.alg))?;
        let cached = self.current_keys();
        let key = match find_key(&cached, header.kid.as_deref(), header.alg, family) {
            Some(key) => key,
            None => {
                self.refresh(client, cached.generation).await?;
                let refreshed = self.current_keys();
                find_key(&refreshed, header.kid.as_deref(), header.alg, family)
                    .ok_or(OidcError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation.leeway = 30;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(OidcError::Invalid)?
            .claims;
        let subject = claim_text(&claims, &self.settings.subject_claim)
            .ok_or_else(|| OidcError::MissingSubject(self.settings.subject_claim.clone()))?;
        let mut values = claim_strings(&claims, &self.settings.role_claim);
        for value in claim_strings(&claims, &self.settings.group_claim) {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        Ok(OidcUser { subject, values })
    }

    pub fn is_admin(&self, user: &OidcUser) -> bool {
        user.values
            .iter()
            .any(|value| self.settings.admin_values.contains(value))
    }

    pub fn may_self_serve(&self, user: &OidcUser) -> bool {
        self.settings.self_service_values.is_empty()
            || user
                .values
                .iter()
                .any(|value| self.settings.self_service_values.contains(value))
    }

    fn current_keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|keys| Arc::clone(&keys))
            .unwrap_or_default()
    }

    /// Fetches the keys at once (the first token need not wait for discovery), then every
    /// `jwks_max_age`, so keys the provider dropped stop verifying. A failed fetch keeps the
    /// cached keys. Runs until its worker stops.
    pub async fn keep_fresh(self: Arc<Self>, client: awc::Client) {
        loop {
            let generation = self.current_keys().generation;
            if let Err(error) = self.refresh(&client, generation).await {
                tracing::warn!(error = %error, "refreshing the OIDC keys failed: keeping the cached ones");
            }
            tokio::time::sleep(self.settings.jwks_max_age).await;
        }
    }

    /// One fetch at a time; a caller that waited for another's fetch uses its result.
    async fn refresh(&self, client: &awc::Client, seen_generation: u64) -> Result<(), OidcError> {
        let mut state = self.refresh.lock().await;
        if self.current_keys().generation != seen_generation {
            return Ok(());
        }
        if state
            .last_attempt
            .is_some_and(|last| last.elapsed() < self.settings.min_refresh_interval)
        {
            return Ok(());
        }
        state.last_attempt = Some(Instant::now());
        let jwks_uri = match (&self.settings.jwks_url, &state.jwks_uri) {
            (Some(configured), _) => configured.clone(),
            (None, Some(discovered)) => discovered.clone(),
            (None, None) => {
                let discovered = self.discover(client).await?;
                state.jwks_uri = Some(discovered.clone());
                discovered
            }
        };
        let body = fetch(client, &jwks_uri, self.settings.fetch_timeout).await?;
        let raw: RawKeySet = serde_json::from_slice(&body).map_err(|error| {
            OidcError::ProviderUnreachable(format!(
                "the JWKS at {jwks_uri} is not a key set: {error}"
            ))
        })?;
        let keys: Vec<CachedKey> = raw.keys.into_iter().filter_map(cached_key).collect();
        tracing::info!(keys = keys.len(), jwks_uri = %jwks_uri, "OIDC keys fetched");
        if let Ok(mut current) = self.keys.write() {
            *current = Arc::new(KeySet {
                generation: seen_generation + 1,
                keys,
            });
        }
        Ok(())
    }

    async fn discover(&self, client: &awc::Client) -> Result<String, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let body = fetch(client, &url, self.settings.fetch_timeout).await?;
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|error| {
            OidcError::ProviderUnreachable(format!("{url} is not a discovery document: {error}"))
        })?;
        if discovery.issuer.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/') {
            return Err(OidcError::ProviderUnreachable(format!(
                "{url} names the issuer `{}`, not the configured `{}`",
                discovery.issuer, self.settings.issuer
            )));
        }
        Ok(discovery.jwks_uri)
    }
}

async fn fetch(
    client: &awc::Client,
    url: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, OidcError> {
    let unreachable = |what: String| OidcError::ProviderUnreachable(format!("{url}: {what}"));
    let work = async {
        let mut response = client
            .get(url)
            .insert_header(("accept", "application/json"))
            .send()
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("answered {}", response.status())));
        }
        response
            .body()
            .limit(MAX_DOCUMENT_BYTES)
            .await
            .map_err(|error| unreachable(error.to_string()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {}s",
                timeout.as_secs_f64()
            )))
        })
}

fn family_of(algorithm: Algorithm) -> Option<KeyFamily> {
    match algorithm {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(KeyFamily::Rsa),
        Algorithm::ES256 => Some(KeyFamily::P256),
        Algorithm::ES384 => Some(KeyFamily::P384),
        _ => None,
    }
}

fn algorithm_of(key_algorithm: KeyAlgorithm) -> Option<Algorithm> {
    match key_algorithm {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        _ => None,
    }
}

/// RSA and P-256/P-384 keys only: symmetric (`oct`) keys in a JWKS are skipped, so a token
/// can never be "signed" with a published secret.
fn cached_key(raw: serde_json::Value) -> Option<CachedKey> {
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => KeyFamily::P256,
            EllipticCurve::P384 => KeyFamily::P384,
            _ => return None,
        },
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(named) => Some(algorithm_of(named)?),
        None => None,
    };
    Some(CachedKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        family,
        key: DecodingKey::from_jwk(&jwk).ok()?,
    })
}

/// The key named by `kid` (or, for a token without one, the only key of its family) that fits
/// the token's algorithm.
fn find_key(
    keys: &KeySet,
    kid: Option<&str>,
    algorithm: Algorithm,
    family: KeyFamily,
) -> Option<DecodingKey> {
    let fits = |key: &&CachedKey| {
        key.family == family && key.algorithm.is_none_or(|named| named == algorithm)
    };
    match kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(fits)
            .find(|key| key.kid.as_deref() == Some(kid))
            .map(|key| key.key.clone()),
        None => {
            let mut candidates = keys.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only.key.clone()),
                _ => None,
            }
        }
    }
}
