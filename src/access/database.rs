//! The database as a source of the key table: every store snapshot (keys, quota policies,
//! overrides, protected endpoints) converted into one `AccessSection` here, and only here, then
//! put in the table as the source `database`. A snapshot the table refuses (a key with a file
//! key's digest or name) keeps the last good database section and logs one warning naming both
//! places. Also where admission's per-key usage goes back to the store (batched by the store).
use std::sync::Arc;

use super::file::{AccessSection, ProtectedEndpoint};
use super::key::{KeyDigest, KeyEntry, KeyLimits, KeySource, Patterns};
use super::limits::Window;
use super::metrics::KeyMetrics;
use super::quota::{Override, Policy};
use super::table::{AccessTable, SourceId};
use crate::store::records::{KeyRecord, QuotaOverride, QuotaPolicy, Snapshot, WindowType};
use crate::store::usage::Counts;
use crate::store::Store;

/// The table's name for the database source; it also starts every database entry's place.
pub const DATABASE_SOURCE: &str = "database";

/// Where admission counts what a key used (the store, written in batches; no IO per request).
pub trait UsageSink: Send + Sync {
    fn record(&self, bucket: &Arc<str>, requests: u64, tokens: u64);
}

impl UsageSink for Store {
    fn record(&self, bucket: &Arc<str>, requests: u64, tokens: u64) {
        self.record_usage_of(
            bucket,
            Counts {
                requests: i64::try_from(requests).unwrap_or(i64::MAX),
                tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
            },
        );
    }
}

/// The table's source id of the database.
pub fn source_id() -> SourceId {
    SourceId::Named(DATABASE_SOURCE.to_owned())
}

/// Puts the store's current snapshot in `table` now (so the first request after start-up sees
/// the database's keys), then every new one as the store publishes it, until the store drops.
pub fn follow(table: Arc<AccessTable>, store: &Store) {
    let mut snapshots = store.subscribe();
    let first = Arc::clone(&snapshots.borrow_and_update());
    let mut last_problems = apply(&table, &first, None).err();
    store.spawn(async move {
        while snapshots.changed().await.is_ok() {
            let snapshot = Arc::clone(&snapshots.borrow_and_update());
            last_problems = apply(&table, &snapshot, last_problems.as_deref()).err();
        }
    });
}

/// Replaces the database section with `snapshot`'s, or says why the table refused it (every
/// conflict, naming both places; never a key). A refusal is logged once, not again for later
/// revisions refused for the same reasons (`already_logged`).
pub fn apply(
    table: &AccessTable,
    snapshot: &Snapshot,
    already_logged: Option<&str>,
) -> Result<(), String> {
    let conflicts = table
        .replace_source(source_id(), section_of(snapshot))
        .err()
        .unwrap_or_default();
    if conflicts.is_empty() {
        return Ok(());
    }
    let problems = conflicts
        .iter()
        .map(|conflict| format!("{}: {}", conflict.at, conflict.message))
        .collect::<Vec<_>>()
        .join("; ");
    if already_logged != Some(problems.as_str()) {
        tracing::warn!(
            revision = snapshot.revision,
            problems = %problems,
            "the database's keys conflict with a key file: keeping the database's last good version"
        );
    }
    Err(problems)
}

/// The one conversion of a store snapshot into the table's terms. Rows the table cannot use
/// (a digest that is not 64 hex digits) are left out with a warning.
pub fn section_of(snapshot: &Snapshot) -> AccessSection {
    AccessSection {
        keys: snapshot.keys.iter().filter_map(key_entry).collect(),
        policies: snapshot.quota_policies.iter().map(policy).collect(),
        overrides: snapshot
            .quota_overrides
            .iter()
            .map(quota_override)
            .collect(),
        protected_endpoints: snapshot
            .protected_endpoints
            .iter()
            .map(|endpoint| ProtectedEndpoint {
                path: endpoint.path.as_str().into(),
                method: endpoint.method.to_ascii_uppercase().into(),
            })
            .collect(),
    }
}

/// `database key `NAME` (id ID)`: where a conflict message says a database key is.
fn key_place(record: &KeyRecord) -> KeySource {
    KeySource::Named(format!("{DATABASE_SOURCE} key `{}` (id {})", record.name, record.id).into())
}

fn key_entry(record: &KeyRecord) -> Option<KeyEntry> {
    let Some(digest) = KeyDigest::from_hex(&record.key_sha256) else {
        tracing::warn!(key_id = %record.id, "a database key's digest is not 64 hex digits: left out");
        return None;
    };
    let limits = &record.limits;
    let name: Arc<str> = record.name.as_str().into();
    Some(KeyEntry {
        metric_label: Arc::clone(&name),
        name,
        owner: record.owner().into(),
        digest,
        expires_at: limits.expires_at,
        disabled: limits.disabled,
        allowed_models: limits
            .allowed_models
            .as_ref()
            .map(|models| Patterns::new(models.iter().map(String::as_str))),
        allowed_operations: limits
            .allowed_operations
            .as_ref()
            .map(|ops| ops.iter().map(|op| op.as_str().into()).collect()),
        limits: KeyLimits {
            requests_per_minute: positive(limits.requests_per_minute),
            requests_per_hour: positive(limits.requests_per_hour),
            requests_per_day: positive(limits.requests_per_day),
            tokens_per_minute: positive(limits.tokens_per_minute),
            tokens_per_day: positive(limits.tokens_per_day),
            max_concurrent_requests: positive(limits.max_concurrent_requests),
            monthly_token_budget: positive(limits.monthly_token_budget),
        },
        source: key_place(record),
        usage_bucket: Some(format!("key:{}", record.id).into()),
        metrics: KeyMetrics::default(),
    })
}

/// The admin API refuses limits below 1; a row edited by hand to 0 or less is no limit.
fn positive(limit: Option<i64>) -> Option<u64> {
    limit
        .and_then(|limit| u64::try_from(limit).ok())
        .filter(|&limit| limit > 0)
}

fn window(window: WindowType) -> Window {
    match window {
        WindowType::Minute => Window::Minute,
        WindowType::Hour => Window::Hour,
        WindowType::Day => Window::Day,
    }
}

fn policy(record: &QuotaPolicy) -> Policy {
    let fields = &record.fields;
    Policy::new(
        &fields.api_path,
        &fields.model,
        window(fields.window_type),
        positive(Some(fields.request_limit)),
        None,
        fields.enforce_per_user,
        KeySource::Named(format!("{DATABASE_SOURCE} quota policy {}", record.id).into()),
    )
}

fn quota_override(record: &QuotaOverride) -> Override {
    let fields = &record.fields;
    let window = window(fields.window_type);
    Override {
        api_path: fields.api_path.as_str().into(),
        model: fields.model.as_str().into(),
        owner: fields.owner_id.as_str().into(),
        window,
        request_limit: positive(Some(fields.request_limit)),
        token_limit: None,
        exempt: fields.exempt,
        starts_at: fields.starts_at,
        ends_at: fields.ends_at,
        source: KeySource::Named(format!("{DATABASE_SOURCE} quota override {}", record.id).into()),
        id: format!(
            "override:{}:{}:{}:{}",
            fields.api_path,
            fields.model,
            fields.owner_id,
            window.name()
        )
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{
        KeyLimits as StoredLimits, ProtectedEndpoint as StoredEndpoint, QuotaOverrideFields,
        QuotaPolicyFields,
    };

    fn record(id: &str, name: &str, secret: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: name.into(),
            owner_id: Some("alice".into()),
            key_sha256: crate::store::keys::key_sha256(secret),
            key_hint: "abcd".into(),
            created_at: 0,
            limits: StoredLimits {
                requests_per_minute: Some(5),
                tokens_per_day: Some(0),
                allowed_models: Some(vec!["openai/*".into()]),
                ..Default::default()
            },
        }
    }

    fn snapshot(keys: Vec<KeyRecord>) -> Snapshot {
        Snapshot::new(
            7,
            keys,
            vec![StoredEndpoint {
                id: "e1".into(),
                path: "/v1/chat/completions".into(),
                method: "post".into(),
                created_at: 0,
            }],
            vec![QuotaPolicy {
                id: "p1".into(),
                fields: QuotaPolicyFields {
                    api_path: "/v1/chat/completions".into(),
                    model: "m".into(),
                    window_type: WindowType::Minute,
                    request_limit: 3,
                    enforce_per_user: false,
                },
                created_at: 0,
            }],
            vec![QuotaOverride {
                id: "o1".into(),
                fields: QuotaOverrideFields {
                    api_path: "/v1/chat/completions".into(),
                    model: "m".into(),
                    owner_id: "alice".into(),
                    window_type: WindowType::Hour,
                    request_limit: 2,
                    exempt: false,
                    starts_at: Some(10),
                    ends_at: None,
                },
                created_at: 0,
            }],
        )
    }

    #[test]
    fn a_snapshot_becomes_one_section_in_the_tables_terms() {
        let section = section_of(&snapshot(vec![
            record("k1", "ci", "llmux_one"),
            KeyRecord {
                key_sha256: "not hex".into(),
                ..record("k2", "bad", "x")
            },
        ]));
        assert_eq!(section.keys.len(), 1, "a bad digest is left out");
        let key = &section.keys[0];
        assert_eq!(key.digest, KeyDigest::of("llmux_one"));
        assert_eq!(&*key.owner, "alice");
        assert_eq!(key.limits.requests_per_minute, Some(5));
        assert_eq!(key.limits.tokens_per_day, None, "0 is no limit");
        assert!(key.may_use_model("openai/gpt") && !key.may_use_model("other"));
        assert_eq!(key.usage_bucket.as_deref(), Some("key:k1"));
        assert_eq!(key.source.to_string(), "database key `ci` (id k1)");
        let policy = &section.policies[0];
        assert!(!policy.per_owner && policy.request_limit == Some(3));
        assert!(policy.applies("/v1/chat/completions", Some("m")));
        let entry = &section.overrides[0];
        assert_eq!(entry.window, Window::Hour);
        assert!(!entry.is_active(9) && entry.is_active(10));
        assert!(policy.same_target(&entry.api_path, &entry.model));
        assert_eq!(
            section.protected_endpoints,
            vec![ProtectedEndpoint {
                path: "/v1/chat/completions".into(),
                method: "POST".into()
            }]
        );
    }

    #[test]
    fn a_database_key_named_like_a_file_key_keeps_the_last_good_database_section() {
        let table = AccessTable::new();
        assert!(!table.protects("/v1/chat/completions", "POST"));
        let good = snapshot(vec![record("k1", "ci", "llmux_one")]);
        assert!(apply(&table, &good, None).is_ok());
        assert!(table.protects("/v1/chat/completions", "post"));
        let file_key = KeyEntry {
            source: KeySource::File {
                file: Arc::from(std::path::Path::new("keys.json")),
                position: None,
            },
            usage_bucket: None,
            ..key_entry(&record("f", "deploy", "llmux_file")).unwrap()
        };
        table
            .replace_file(
                std::path::Path::new("keys.json"),
                AccessSection {
                    keys: vec![file_key],
                    ..Default::default()
                },
            )
            .unwrap();
        // The database now names a key `deploy` too: refused, `ci` stays.
        let clash = snapshot(vec![
            record("k1", "ci", "llmux_one"),
            record("k3", "deploy", "llmux_three"),
        ]);
        assert_eq!(
            apply(&table, &clash, None).unwrap_err(),
            "database key `deploy` (id k3): key `deploy` has the same name as the key at keys.json"
        );
        let now = table.snapshot();
        assert!(now.key(&KeyDigest::of("llmux_one")).is_some());
        assert!(now.key(&KeyDigest::of("llmux_three")).is_none());
        assert!(now.is_protected("/v1/chat/completions", "POST"));
        assert!(!now.is_protected("/v1/chat/completions", "GET"));
        // Same digest as the file key: refused as well.
        let same_digest = snapshot(vec![record("k4", "other", "llmux_file")]);
        let problem = apply(&table, &same_digest, None).unwrap_err();
        assert!(
            problem.contains("same key_sha256 as key `deploy` at keys.json"),
            "{problem}"
        );
    }
}
