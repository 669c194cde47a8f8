//! What the store holds, as the rest of llmux sees it: plain records and the snapshot the
//! request path reads (never the database).
use std::collections::HashMap;

/// A key's limits and restrictions: the shared key model's fields, named as in key files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Seconds since the epoch; the key stops working then.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    /// Glob patterns of exposed models; `None` allows every model.
    pub allowed_models: Option<Vec<String>>,
    /// Operation names (`chat`, `embeddings`, ...); `None` allows every operation.
    pub allowed_operations: Option<Vec<String>>,
    /// Also fast-openai-api-proxy's "default quota" of a key.
    pub requests_per_minute: Option<i64>,
    pub requests_per_hour: Option<i64>,
    pub requests_per_day: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub tokens_per_day: Option<i64>,
    pub max_concurrent_requests: Option<i64>,
    pub monthly_token_budget: Option<i64>,
}

/// A key minted through the admin or self-service API (or the CLI). Only its digest is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub owner_id: Option<String>,
    /// SHA-256 of the key, lowercase hex.
    pub key_sha256: String,
    /// The key's last 4 characters, for `llmux_…XXXX`.
    pub key_hint: String,
    pub created_at: i64,
    pub limits: KeyLimits,
}

impl KeyRecord {
    /// `llmux_…XXXX`: enough to tell keys apart, useless to an attacker.
    pub fn masked_key(&self) -> String {
        format!("llmux_…{}", self.key_hint)
    }

    /// The owner identity quotas and self-service use: the `owner_id`, else `key:<name>`.
    pub fn owner(&self) -> String {
        self.owner_id
            .clone()
            .unwrap_or_else(|| format!("key:{}", self.name))
    }

    /// Not disabled and not expired at `now` (seconds since the epoch).
    pub fn is_usable_at(&self, now: i64) -> bool {
        !self.limits.disabled && self.limits.expires_at.is_none_or(|expiry| now < expiry)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowType {
    Minute,
    Hour,
    Day,
}

impl WindowType {
    pub const ALL: [WindowType; 3] = [Self::Minute, Self::Hour, Self::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    /// Start of the epoch-aligned (UTC) window holding `now`.
    pub fn start_of(self, now: i64) -> i64 {
        now - now.rem_euclid(self.seconds())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedEndpoint {
    pub id: String,
    /// Normalized: a leading `/`, no trailing `/`.
    pub path: String,
    /// Upper case.
    pub method: String,
    pub created_at: i64,
}

/// The fields of a quota policy a caller sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPolicyFields {
    pub api_path: String,
    pub model: String,
    pub window_type: WindowType,
    pub request_limit: i64,
    pub enforce_per_user: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPolicy {
    pub id: String,
    pub fields: QuotaPolicyFields,
    pub created_at: i64,
}

/// The fields of a quota override a caller sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOverrideFields {
    pub api_path: String,
    pub model: String,
    pub owner_id: String,
    pub window_type: WindowType,
    pub request_limit: i64,
    pub exempt: bool,
    /// Seconds since the epoch; `None` is open.
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOverride {
    pub id: String,
    pub fields: QuotaOverrideFields,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Scheduled,
    Active,
    Expired,
}

impl WindowState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Active => "active",
            Self::Expired => "expired",
        }
    }
}

impl QuotaOverrideFields {
    pub fn window_state_at(&self, now: i64) -> WindowState {
        if self.starts_at.is_some_and(|start| now < start) {
            WindowState::Scheduled
        } else if self.ends_at.is_some_and(|end| now >= end) {
            WindowState::Expired
        } else {
            WindowState::Active
        }
    }
}

/// One audit row: who changed what, when. Never holds a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    /// `admin-token`, `oidc:<sub>`, `key:<name>`, `cli`, ...
    pub actor: String,
    /// `key.create`, `quota_policy.update`, ...
    pub action: String,
    /// The id of what changed.
    pub target: String,
    /// JSON of the change, without secrets.
    pub detail: String,
}

/// Everything the request path needs from the store, at one revision. Replaced whole when any
/// replica changes the store; readers keep the `Arc` they took.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// Keys that are not revoked (disabled and expired ones included: admission says why).
    pub keys: Vec<KeyRecord>,
    pub protected_endpoints: Vec<ProtectedEndpoint>,
    pub quota_policies: Vec<QuotaPolicy>,
    pub quota_overrides: Vec<QuotaOverride>,
    by_digest: HashMap<String, usize>,
}

impl Snapshot {
    pub fn new(
        revision: i64,
        keys: Vec<KeyRecord>,
        protected_endpoints: Vec<ProtectedEndpoint>,
        quota_policies: Vec<QuotaPolicy>,
        quota_overrides: Vec<QuotaOverride>,
    ) -> Self {
        let by_digest = keys
            .iter()
            .enumerate()
            .map(|(index, key)| (key.key_sha256.clone(), index))
            .collect();
        Self {
            revision,
            keys,
            protected_endpoints,
            quota_policies,
            quota_overrides,
            by_digest,
        }
    }

    /// The key whose SHA-256 hex digest is `digest`, if it is not revoked.
    pub fn key_by_digest(&self, digest: &str) -> Option<&KeyRecord> {
        self.by_digest
            .get(digest)
            .and_then(|&index| self.keys.get(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(starts_at: Option<i64>, ends_at: Option<i64>, now: i64, expected: WindowState) {
        let fields = QuotaOverrideFields {
            api_path: "/v1/chat/completions".into(),
            model: "m".into(),
            owner_id: "alice".into(),
            window_type: WindowType::Minute,
            request_limit: 1,
            exempt: false,
            starts_at,
            ends_at,
        };
        assert_eq!(
            fields.window_state_at(now),
            expected,
            "{starts_at:?}..{ends_at:?} at {now}"
        );
    }

    #[test]
    fn override_window_states() {
        check(None, None, 100, WindowState::Active);
        check(Some(200), None, 100, WindowState::Scheduled);
        check(Some(100), Some(200), 100, WindowState::Active);
        check(None, Some(100), 100, WindowState::Expired);
        check(Some(50), Some(99), 100, WindowState::Expired);
    }

    #[test]
    fn windows_are_epoch_aligned() {
        assert_eq!(WindowType::Minute.start_of(125), 120);
        assert_eq!(WindowType::Hour.start_of(3601), 3600);
        assert_eq!(WindowType::Day.start_of(86_399), 0);
    }
}
