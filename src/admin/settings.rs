//! Settings of the admin and self-service APIs, their store and OIDC; start-up refuses
//! inconsistent ones with a message naming the setting.
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::access::admin::AdminToken;
use crate::access::key::KeyLimits;
use crate::cli::parse_seconds;
use crate::oidc::OidcSettings;
use crate::secret::ApiKey;
use crate::store::{StoreError, StoreLocation};

#[derive(Debug, Clone, Args)]
pub struct AccessApiArgs {
    /// The admin credential (at least 16 characters): a bearer token for /admin/*, the admin
    /// API at /api/admin and, with access control on, the status page. Setting it turns the
    /// admin API on.
    #[arg(long, env = "LLMUX_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<ApiKey>,
    /// A file holding the admin credential (its first line), instead of --admin-token.
    #[arg(long, env = "LLMUX_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Turns the self-service API at /api on: callers manage their own keys, proven by OIDC or
    /// an existing valid llmux key.
    #[arg(long, env = "LLMUX_SELF_SERVICE_API")]
    pub self_service_api: bool,
    /// Directory of the embedded SQLite store (created only when an API above is on).
    #[arg(long, env = "LLMUX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user:password@host/db`): replicas on one database share
    /// keys, policies and usage. Unset: the SQLite file under the data dir.
    #[arg(long, env = "LLMUX_DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: Option<ApiKey>,
    /// OIDC issuer URL (the tokens' `iss`); turns OIDC on for the admin and self-service APIs.
    #[arg(long, env = "LLMUX_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// JWKS URL [default: discovered from the issuer].
    #[arg(long, env = "LLMUX_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// Audience the tokens must carry in `aud` [default: not checked].
    #[arg(long, env = "LLMUX_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// Claim holding roles: a name or a dotted path (`realm_access.roles`).
    #[arg(long, env = "LLMUX_OIDC_ROLE_CLAIM", default_value = "roles")]
    pub oidc_role_claim: String,
    /// Claim holding groups: a name or a dotted path.
    #[arg(long, env = "LLMUX_OIDC_GROUP_CLAIM", default_value = "groups")]
    pub oidc_group_claim: String,
    /// Claim naming the caller (owner `oidc:<value>`).
    #[arg(long, env = "LLMUX_OIDC_SUBJECT_CLAIM", default_value = "sub")]
    pub oidc_subject_claim: String,
    /// Role or group values that make an OIDC caller an admin (comma-separated).
    #[arg(
        long,
        env = "LLMUX_OIDC_ADMIN_VALUES",
        value_delimiter = ',',
        default_value = "llmux-admin"
    )]
    pub oidc_admin_values: Vec<String>,
    /// Role or group values that allow self-service (comma-separated) [default: any valid token].
    #[arg(long, env = "LLMUX_OIDC_SELF_SERVICE_VALUES", value_delimiter = ',')]
    pub oidc_self_service_values: Vec<String>,
    /// The admin API accepts only OIDC admins, not the admin token.
    #[arg(long, env = "LLMUX_ADMIN_OIDC_ONLY")]
    pub admin_oidc_only: bool,
    /// Self-service accepts only OIDC callers, not llmux keys.
    #[arg(long, env = "LLMUX_SELF_SERVICE_OIDC_ONLY")]
    pub self_service_oidc_only: bool,
    /// OIDC bearer tokens also authenticate /v1 calls: a token that verifies (issuer, audience,
    /// expiry, a known key) is a caller with owner `oidc:<sub>`, under the quota policies and
    /// overrides of that owner and the defaults below. Needs --oidc-issuer; turns access control
    /// on in `auto` mode.
    #[arg(long, env = "LLMUX_OIDC_V1")]
    pub oidc_v1: bool,
    /// Models OIDC callers may use on /v1 (comma-separated glob patterns) [default: every model].
    #[arg(long, env = "LLMUX_OIDC_V1_ALLOWED_MODELS", value_delimiter = ',')]
    pub oidc_v1_allowed_models: Vec<String>,
    /// Requests per minute of each OIDC caller on /v1 [default: unlimited].
    #[arg(long, env = "LLMUX_OIDC_V1_REQUESTS_PER_MINUTE")]
    pub oidc_v1_requests_per_minute: Option<u64>,
    /// Tokens per minute of each OIDC caller on /v1 [default: unlimited].
    #[arg(long, env = "LLMUX_OIDC_V1_TOKENS_PER_MINUTE")]
    pub oidc_v1_tokens_per_minute: Option<u64>,
    /// Tokens per day of each OIDC caller on /v1 [default: unlimited].
    #[arg(long, env = "LLMUX_OIDC_V1_TOKENS_PER_DAY")]
    pub oidc_v1_tokens_per_day: Option<u64>,
    /// Time allowed for each discovery or JWKS fetch, in seconds.
    #[arg(long, env = "LLMUX_OIDC_FETCH_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub oidc_fetch_timeout: Duration,
    /// How often the JWKS is fetched again, in seconds (keys the provider dropped stop working).
    #[arg(long, env = "LLMUX_OIDC_JWKS_MAX_AGE", default_value = "300", value_parser = parse_seconds)]
    pub oidc_jwks_max_age: Duration,
}

impl Default for AccessApiArgs {
    fn default() -> Self {
        Self {
            admin_token: None,
            admin_token_file: None,
            self_service_api: false,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            oidc_issuer: None,
            oidc_jwks_url: None,
            oidc_audience: None,
            oidc_role_claim: "roles".into(),
            oidc_group_claim: "groups".into(),
            oidc_subject_claim: "sub".into(),
            oidc_admin_values: vec!["llmux-admin".into()],
            oidc_self_service_values: Vec::new(),
            admin_oidc_only: false,
            self_service_oidc_only: false,
            oidc_v1: false,
            oidc_v1_allowed_models: Vec::new(),
            oidc_v1_requests_per_minute: None,
            oidc_v1_tokens_per_minute: None,
            oidc_v1_tokens_per_day: None,
            oidc_fetch_timeout: Duration::from_secs(5),
            oidc_jwks_max_age: Duration::from_secs(300),
        }
    }
}

fn parse_secret(text: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(text))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    Disabled,
    StaticTokenOnly,
    Hybrid,
    OidcOnly,
}

impl AdminMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::StaticTokenOnly => "static-token-only",
            Self::Hybrid => "hybrid",
            Self::OidcOnly => "oidc-only",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfServiceMode {
    Disabled,
    /// Only an existing valid llmux key proves who the caller is.
    KeyOnly,
    OidcOrKey,
    OidcOnly,
}

impl SelfServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::KeyOnly => "key-only",
            Self::OidcOrKey => "oidc-or-key",
            Self::OidcOnly => "oidc-only",
        }
    }

    pub fn accepts_keys(self) -> bool {
        matches!(self, Self::KeyOnly | Self::OidcOrKey)
    }
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct AccessApiSettings {
    pub admin: AdminMode,
    /// The admin credential (`access::admin`), read once here.
    pub admin_token: Option<AdminToken>,
    pub self_service: SelfServiceMode,
    pub oidc: Option<OidcSettings>,
    /// Present when OIDC tokens also authenticate /v1 calls.
    pub oidc_v1: Option<OidcV1Defaults>,
    pub store: StoreLocation,
}

/// What an OIDC caller on /v1 may do (`--oidc-v1-*`), beside the policies of its owner.
#[derive(Debug, Clone, Default)]
pub struct OidcV1Defaults {
    /// Glob patterns; `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    pub limits: KeyLimits,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl From<StoreError> for SettingsError {
    fn from(error: StoreError) -> Self {
        Self(error.to_string())
    }
}

impl AccessApiSettings {
    /// `None` when neither API is on: then no store is opened and no data dir is created.
    /// `env` is where `LLMUX_ADMIN_TOKEN` / `LLMUX_ADMIN_TOKEN_FILE` are read when the flags
    /// are unset (the process environment, or a test's map).
    pub fn from_args(
        args: &AccessApiArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, SettingsError> {
        let refuse = |message: &str| Err(SettingsError(message.to_owned()));
        let issuer = args
            .oidc_issuer
            .as_deref()
            .map(str::trim)
            .filter(|issuer| !issuer.is_empty());
        if issuer.is_none() {
            if args.admin_oidc_only {
                return refuse("LLMUX_ADMIN_OIDC_ONLY (--admin-oidc-only) needs LLMUX_OIDC_ISSUER (--oidc-issuer)");
            }
            if args.self_service_oidc_only {
                return refuse("LLMUX_SELF_SERVICE_OIDC_ONLY (--self-service-oidc-only) needs LLMUX_OIDC_ISSUER (--oidc-issuer)");
            }
            if args.oidc_jwks_url.is_some() {
                return refuse("LLMUX_OIDC_JWKS_URL (--oidc-jwks-url) needs LLMUX_OIDC_ISSUER (--oidc-issuer): tokens are checked against the issuer");
            }
            if args.oidc_v1 {
                return refuse("LLMUX_OIDC_V1 (--oidc-v1) needs LLMUX_OIDC_ISSUER (--oidc-issuer)");
            }
            if args.oidc_audience.is_some() {
                return refuse(
                    "LLMUX_OIDC_AUDIENCE (--oidc-audience) needs LLMUX_OIDC_ISSUER (--oidc-issuer)",
                );
            }
        }
        if args.self_service_oidc_only && !args.self_service_api {
            return refuse("LLMUX_SELF_SERVICE_OIDC_ONLY (--self-service-oidc-only) is set but the self-service API is off: set LLMUX_SELF_SERVICE_API (--self-service-api)");
        }
        let admin_token = AdminToken::read(
            args.admin_token.as_ref(),
            args.admin_token_file.as_deref(),
            env,
        )
        .map_err(SettingsError)?;
        if admin_token.is_some() && args.admin_oidc_only {
            return refuse("LLMUX_ADMIN_TOKEN (--admin-token) is set but LLMUX_ADMIN_OIDC_ONLY (--admin-oidc-only) refuses it: unset one of them");
        }
        let oidc = match issuer {
            None => None,
            Some(issuer) => {
                if !is_allowed_url(issuer) {
                    return refuse("LLMUX_OIDC_ISSUER (--oidc-issuer) must be an https:// URL (http:// only on localhost)");
                }
                if let Some(jwks) = &args.oidc_jwks_url {
                    if !is_allowed_url(jwks) {
                        return refuse("LLMUX_OIDC_JWKS_URL (--oidc-jwks-url) must be an https:// URL (http:// only on localhost)");
                    }
                }
                if args.oidc_subject_claim.trim().is_empty() {
                    return refuse(
                        "LLMUX_OIDC_SUBJECT_CLAIM (--oidc-subject-claim) must not be empty",
                    );
                }
                if args.oidc_role_claim.trim().is_empty() && args.oidc_group_claim.trim().is_empty()
                {
                    return refuse(
                        "LLMUX_OIDC_ROLE_CLAIM and LLMUX_OIDC_GROUP_CLAIM must not both be empty",
                    );
                }
                let admin_values = clean(&args.oidc_admin_values);
                if args.admin_oidc_only && admin_values.is_empty() {
                    return refuse("LLMUX_OIDC_ADMIN_VALUES (--oidc-admin-values) must name at least one value with LLMUX_ADMIN_OIDC_ONLY");
                }
                Some(OidcSettings {
                    issuer: issuer.to_owned(),
                    jwks_url: args.oidc_jwks_url.clone(),
                    audience: args.oidc_audience.clone(),
                    role_claim: args.oidc_role_claim.trim().to_owned(),
                    group_claim: args.oidc_group_claim.trim().to_owned(),
                    subject_claim: args.oidc_subject_claim.trim().to_owned(),
                    admin_values,
                    self_service_values: clean(&args.oidc_self_service_values),
                    fetch_timeout: args.oidc_fetch_timeout,
                    min_refresh_interval: Duration::from_secs(1),
                    jwks_max_age: args.oidc_jwks_max_age,
                })
            }
        };
        let oidc_admin = oidc
            .as_ref()
            .is_some_and(|oidc| !oidc.admin_values.is_empty());
        let admin = match (admin_token.is_some(), oidc_admin, args.admin_oidc_only) {
            (_, true, true) => AdminMode::OidcOnly,
            (true, true, false) => AdminMode::Hybrid,
            (true, false, _) => AdminMode::StaticTokenOnly,
            (false, true, false) => AdminMode::Hybrid,
            (false, false, _) => AdminMode::Disabled,
        };
        let self_service = match (
            args.self_service_api,
            oidc.is_some(),
            args.self_service_oidc_only,
        ) {
            (false, _, _) => SelfServiceMode::Disabled,
            (true, true, true) => SelfServiceMode::OidcOnly,
            (true, true, false) => SelfServiceMode::OidcOrKey,
            (true, false, _) => SelfServiceMode::KeyOnly,
        };
        // OIDC on /v1 alone (no admin values, no self-service) still needs the verifier, which
        // lives with the APIs: the store opens too.
        if admin == AdminMode::Disabled
            && self_service == SelfServiceMode::Disabled
            && !args.oidc_v1
        {
            return Ok(None);
        }
        let store = StoreLocation::from_settings(
            &args.data_dir,
            args.database_url.as_ref().map(ApiKey::expose),
        )?;
        Ok(Some(Self {
            admin,
            admin_token,
            self_service,
            oidc,
            oidc_v1: args.oidc_v1.then(|| OidcV1Defaults {
                allowed_models: Some(clean(&args.oidc_v1_allowed_models))
                    .filter(|models| !models.is_empty()),
                limits: KeyLimits {
                    requests_per_minute: args.oidc_v1_requests_per_minute,
                    tokens_per_minute: args.oidc_v1_tokens_per_minute,
                    tokens_per_day: args.oidc_v1_tokens_per_day,
                    ..KeyLimits::default()
                },
            }),
            store,
        }))
    }
}

fn clean(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect()
}

fn is_allowed_url(url: &str) -> bool {
    url.starts_with("https://")
        || ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|local| {
                url.strip_prefix(local)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        edit: impl FnOnce(&mut AccessApiArgs),
        expected: Result<Option<(AdminMode, SelfServiceMode)>, &str>,
    ) {
        let mut args = AccessApiArgs::default();
        edit(&mut args);
        let result = AccessApiSettings::from_args(&args, &|_| None)
            .map(|settings| settings.map(|settings| (settings.admin, settings.self_service)));
        match (result, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(error), Err(names)) => {
                assert!(error.0.contains(names), "{error} should name {names}")
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    fn token(args: &mut AccessApiArgs) {
        args.admin_token = Some(ApiKey::new("a-long-enough-admin-token"));
    }

    fn issuer(args: &mut AccessApiArgs) {
        args.oidc_issuer = Some("https://id.example.com/realms/x".into());
    }

    #[test]
    fn modes_follow_the_settings_and_inconsistent_ones_name_the_setting() {
        check(|_| {}, Ok(None));
        check(
            token,
            Ok(Some((
                AdminMode::StaticTokenOnly,
                SelfServiceMode::Disabled,
            ))),
        );
        check(
            |args| {
                token(args);
                issuer(args);
                args.self_service_api = true;
            },
            Ok(Some((AdminMode::Hybrid, SelfServiceMode::OidcOrKey))),
        );
        check(
            |args| {
                issuer(args);
                args.admin_oidc_only = true;
                args.self_service_api = true;
                args.self_service_oidc_only = true;
            },
            Ok(Some((AdminMode::OidcOnly, SelfServiceMode::OidcOnly))),
        );
        check(
            |args| args.self_service_api = true,
            Ok(Some((AdminMode::Disabled, SelfServiceMode::KeyOnly))),
        );
        check(
            |args| args.admin_oidc_only = true,
            Err("LLMUX_ADMIN_OIDC_ONLY"),
        );
        check(
            |args| {
                args.self_service_api = true;
                args.self_service_oidc_only = true;
            },
            Err("LLMUX_SELF_SERVICE_OIDC_ONLY"),
        );
        check(
            |args| {
                issuer(args);
                args.self_service_oidc_only = true;
            },
            Err("LLMUX_SELF_SERVICE_API"),
        );
        check(
            |args| {
                token(args);
                issuer(args);
                args.admin_oidc_only = true;
            },
            Err("LLMUX_ADMIN_TOKEN"),
        );
        check(
            |args| args.admin_token = Some(ApiKey::new("short")),
            Err("LLMUX_ADMIN_TOKEN"),
        );
        check(
            |args| args.oidc_jwks_url = Some("https://x/jwks".into()),
            Err("LLMUX_OIDC_JWKS_URL"),
        );
        check(
            |args| {
                token(args);
                args.oidc_v1 = true;
            },
            Err("LLMUX_OIDC_ISSUER"),
        );
        check(
            |args| {
                issuer(args);
                args.oidc_admin_values = Vec::new();
                args.oidc_v1 = true;
            },
            Ok(Some((AdminMode::Disabled, SelfServiceMode::Disabled))),
        );
        check(
            |args| {
                token(args);
                args.oidc_issuer = Some("http://id.example.com".into());
            },
            Err("LLMUX_OIDC_ISSUER"),
        );
        check(
            |args| {
                issuer(args);
                args.oidc_subject_claim = " ".into();
            },
            Err("LLMUX_OIDC_SUBJECT_CLAIM"),
        );
        check(
            |args| {
                issuer(args);
                args.admin_oidc_only = true;
                args.oidc_admin_values = vec![String::new()];
            },
            Err("LLMUX_OIDC_ADMIN_VALUES"),
        );
        check(
            |args| {
                token(args);
                args.database_url = Some(ApiKey::new("mysql://x"));
            },
            Err("LLMUX_DATABASE_URL"),
        );
    }

    #[test]
    fn plain_http_issuers_are_only_accepted_on_loopback() {
        assert!(is_allowed_url("http://127.0.0.1:8080/realms/x"));
        assert!(is_allowed_url("http://localhost"));
        assert!(!is_allowed_url("http://localhost.evil.com"));
        assert!(!is_allowed_url("http://id.example.com"));
        assert!(is_allowed_url("https://id.example.com"));
    }
}
