//! The access store against a real SQLite file and a real PostgreSQL server.
use std::time::{Duration, Instant};

use llmux::store::keys::{key_sha256, NewKey};
use llmux::store::records::{KeyLimits, QuotaOverrideFields, QuotaPolicyFields, WindowType};
use llmux::store::usage::Counts;
use llmux::store::{Actor, Store, StoreError, StoreLocation, StoreTimings, WhenUnreachable};

use crate::postgres::Postgres;

fn fast() -> StoreTimings {
    StoreTimings {
        poll_interval: Duration::from_millis(100),
        usage_flush_interval: Duration::from_millis(100),
    }
}

fn policy(model: &str) -> QuotaPolicyFields {
    QuotaPolicyFields {
        api_path: "/v1/chat/completions".into(),
        model: model.into(),
        window_type: WindowType::Minute,
        request_limit: 10,
        enforce_per_user: true,
    }
}

fn quota_override(owner: &str) -> QuotaOverrideFields {
    QuotaOverrideFields {
        api_path: "/v1/chat/completions".into(),
        model: "m".into(),
        owner_id: owner.into(),
        window_type: WindowType::Minute,
        request_limit: 2,
        exempt: false,
        starts_at: None,
        ends_at: None,
    }
}

/// One scenario, run on each engine: everything is written, conflicts are conflicts, the
/// snapshot follows, and the store reopens with the same content.
async fn keeps_everything_and_reopens(location: StoreLocation) {
    let actor = Actor("admin-token".into());
    let store = Store::open(location.clone(), fast(), WhenUnreachable::Fail).unwrap();
    let limits = KeyLimits {
        allowed_models: Some(vec!["openai/*".into()]),
        requests_per_minute: Some(60),
        expires_at: Some(4_000_000_000),
        ..KeyLimits::default()
    };
    let (record, key) = store
        .create_key(
            &actor,
            NewKey {
                name: "alice-laptop".into(),
                owner_id: Some("alice".into()),
                limits: limits.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(record.key_sha256, key_sha256(&key));
    assert_eq!(
        record.masked_key(),
        format!("llmux_…{}", &key[key.len() - 4..])
    );
    let duplicate = store
        .create_key(
            &actor,
            NewKey {
                name: "alice-laptop".into(),
                owner_id: None,
                limits: KeyLimits::default(),
            },
        )
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict { .. })),
        "{duplicate:?}"
    );

    let created_policy = store
        .create_quota_policy(&actor, policy("m"))
        .await
        .unwrap();
    assert!(matches!(
        store.create_quota_policy(&actor, policy("m")).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut global = policy("m");
    global.enforce_per_user = false;
    let updated = store
        .update_quota_policy(&actor, created_policy.id.clone(), global)
        .await
        .unwrap()
        .unwrap();
    assert!(!updated.fields.enforce_per_user);
    assert!(store
        .update_quota_policy(&actor, "nope".into(), policy("x"))
        .await
        .unwrap()
        .is_none());
    store
        .create_quota_override(&actor, quota_override("alice"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_quota_override(&actor, quota_override("alice"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let endpoint = store
        .create_protected_endpoint(&actor, "/v1/chat/completions".into(), "POST".into())
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_protected_endpoint(&actor, "/v1/chat/completions".into(), "POST".into())
            .await,
        Err(StoreError::Conflict { .. })
    ));

    // The local snapshot has every change as soon as the call returns.
    let snapshot = store.snapshot();
    let found = snapshot.key_by_digest(&key_sha256(&key)).unwrap();
    assert_eq!(found.limits, limits);
    assert_eq!(found.owner(), "alice");
    assert_eq!(snapshot.quota_policies.len(), 1);
    assert_eq!(snapshot.quota_overrides.len(), 1);
    assert_eq!(snapshot.protected_endpoints, vec![endpoint.clone()]);

    // Usage is counted in memory and written in a batch.
    store.record_usage(
        "key:1",
        Counts {
            requests: 1,
            tokens: 10,
        },
    );
    store.record_usage(
        "key:1",
        Counts {
            requests: 1,
            tokens: 5,
        },
    );
    store.flush_usage().await.unwrap();
    store.record_usage(
        "key:1",
        Counts {
            requests: 1,
            tokens: 0,
        },
    );
    let now = llmux::store::now();
    let counted = store.usage("key:1".into(), WindowType::Minute, now).await;
    // The minute may have turned between recording and reading: then the new one is empty.
    if WindowType::Minute.start_of(now) == WindowType::Minute.start_of(llmux::store::now()) {
        let counted = counted.unwrap();
        assert!(
            counted.requests == 3 || counted.requests == 0,
            "{counted:?}"
        );
    }

    assert!(store
        .revoke_key(&actor, record.id.clone(), Some("bob".into()))
        .await
        .unwrap()
        .eq(&false));
    assert!(store
        .revoke_key(&actor, record.id.clone(), None)
        .await
        .unwrap());
    assert!(store.snapshot().key_by_digest(&key_sha256(&key)).is_none());
    assert!(!store
        .revoke_key(&actor, record.id.clone(), None)
        .await
        .unwrap());
    assert!(store
        .delete_protected_endpoint(&actor, endpoint.id.clone())
        .await
        .unwrap());
    store.flush_usage().await.unwrap();
    drop(store);

    let reopened = Store::open(location, fast(), WhenUnreachable::Fail).unwrap();
    assert!(reopened.list_keys(None).await.unwrap().is_empty());
    assert_eq!(reopened.list_quota_policies().await.unwrap().len(), 1);
    assert_eq!(reopened.list_quota_overrides().await.unwrap().len(), 1);
    assert!(reopened
        .list_protected_endpoints()
        .await
        .unwrap()
        .is_empty());
    let audit = reopened.audit(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "protected_endpoint.delete",
            "key.revoke",
            "protected_endpoint.create",
            "quota_override.create",
            "quota_policy.update",
            "quota_policy.create",
            "key.create"
        ]
    );
    for entry in &audit {
        assert_eq!(entry.actor, "admin-token");
        assert!(
            !entry.detail.contains(&key),
            "a key in the audit: {entry:?}"
        );
        assert!(
            !entry.detail.contains(&key_sha256(&key)),
            "a digest in the audit: {entry:?}"
        );
    }
}

#[tokio::test]
async fn a_sqlite_store_keeps_keys_policies_overrides_endpoints_and_audit() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("not-yet-there");
    keeps_everything_and_reopens(StoreLocation::Sqlite {
        data_dir: data_dir.clone(),
    })
    .await;
    assert!(data_dir.join("llmux.db").is_file());
}

#[tokio::test]
async fn a_postgres_store_keeps_keys_policies_overrides_endpoints_and_audit() {
    let postgres = Postgres::start();
    keeps_everything_and_reopens(StoreLocation::Postgres {
        url: postgres.url.clone(),
    })
    .await;
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_the_other_within_two_seconds() {
    let postgres = Postgres::start();
    let location = StoreLocation::Postgres {
        url: postgres.url.clone(),
    };
    let replica_a = Store::open(
        location.clone(),
        StoreTimings::default(),
        WhenUnreachable::Fail,
    )
    .unwrap();
    let replica_b = Store::open(location, StoreTimings::default(), WhenUnreachable::Fail).unwrap();
    let mut changes = replica_b.subscribe();
    let started = Instant::now();
    let (_, key) = replica_a
        .create_key(
            &Actor("cli".into()),
            NewKey {
                name: "shared".into(),
                owner_id: None,
                limits: KeyLimits::default(),
            },
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), async {
        while replica_b
            .snapshot()
            .key_by_digest(&key_sha256(&key))
            .is_none()
        {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("replica B sees replica A's key within 2 s");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_store_that_goes_down_keeps_its_snapshot_and_fails_changes_quickly() {
    let mut postgres = Postgres::start();
    let store = Store::open(
        StoreLocation::Postgres {
            url: postgres.url.clone(),
        },
        fast(),
        WhenUnreachable::Fail,
    )
    .unwrap();
    let (_, key) = store
        .create_key(
            &Actor("cli".into()),
            NewKey {
                name: "before-the-outage".into(),
                owner_id: None,
                limits: KeyLimits::default(),
            },
        )
        .await
        .unwrap();
    postgres.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.snapshot().key_by_digest(&key_sha256(&key)).is_some());
    let started = Instant::now();
    let failed = store.list_keys(None).await;
    assert!(
        matches!(
            failed,
            Err(StoreError::Unavailable(_) | StoreError::Timeout)
        ),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    store.record_usage(
        "key:x",
        Counts {
            requests: 1,
            tokens: 1,
        },
    );
    assert!(store.flush_usage().await.is_err());
}
