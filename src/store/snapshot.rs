//! The snapshot the request path reads, and how every replica keeps it current: a cheap poll of
//! the one-row revision (bumped by every change in the change's transaction), then a full
//! reload when it moved. Works the same on SQLite and PostgreSQL; with the default 500 ms poll
//! a change reaches every replica well within 2 s. A failing store keeps the last snapshot.
use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Row;

use crate::store::keys::key_from_row;
use crate::store::quotas::{override_from_row, policy_from_row};
use crate::store::records::{ProtectedEndpoint, Snapshot};
use crate::store::{Context, StoreError};

pub(crate) async fn revision(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(pool)
        .await?
        .try_get("revision")
}

/// Reads everything at one revision (one transaction, so the parts agree).
pub(crate) async fn load(pool: &AnyPool) -> Result<Snapshot, StoreError> {
    let mut transaction = pool.begin().await?;
    let revision: i64 = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(&mut *transaction)
        .await?
        .try_get("revision")?;
    let keys = sqlx::query(&format!(
        "SELECT {} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id",
        crate::store::keys::KEY_COLUMNS
    ))
    .fetch_all(&mut *transaction)
    .await?
    .iter()
    .map(key_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let protected_endpoints = sqlx::query(
        "SELECT id, path, method, created_at FROM protected_endpoints ORDER BY created_at, id",
    )
    .fetch_all(&mut *transaction)
    .await?
    .iter()
    .map(endpoint_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let quota_policies = sqlx::query(&format!(
        "SELECT {} FROM quota_policies ORDER BY created_at, id",
        crate::store::quotas::POLICY_COLUMNS
    ))
    .fetch_all(&mut *transaction)
    .await?
    .iter()
    .map(policy_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let quota_overrides = sqlx::query(&format!(
        "SELECT {} FROM quota_overrides ORDER BY created_at, id",
        crate::store::quotas::OVERRIDE_COLUMNS
    ))
    .fetch_all(&mut *transaction)
    .await?
    .iter()
    .map(override_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    transaction.commit().await?;
    Ok(Snapshot::new(
        revision,
        keys,
        protected_endpoints,
        quota_policies,
        quota_overrides,
    ))
}

/// Reloads when the revision moved; publishes only a newer snapshot.
pub(crate) async fn refresh(context: &Context) -> Result<(), StoreError> {
    let current = context.snapshot.borrow().revision;
    if revision(&context.pool).await? == current {
        return Ok(());
    }
    let fresh = load(&context.pool).await?;
    context.snapshot.send_if_modified(|published| {
        if fresh.revision > published.revision {
            *published = Arc::new(fresh);
            true
        } else {
            false
        }
    });
    Ok(())
}

/// Runs on the store's runtime until it shuts down.
pub(crate) async fn poll(context: Context, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match tokio::time::timeout(Duration::from_secs(5), refresh(&context)).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("access store reachable again");
                }
                failing = false;
            }
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(error = %error, "access store unreachable: keeping the last snapshot");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!("access store too slow: keeping the last snapshot");
                }
                failing = true;
            }
        }
    }
}

pub(crate) fn endpoint_from_row(row: &sqlx::any::AnyRow) -> Result<ProtectedEndpoint, sqlx::Error> {
    Ok(ProtectedEndpoint {
        id: row.try_get("id")?,
        path: row.try_get("path")?,
        method: row.try_get("method")?,
        created_at: row.try_get("created_at")?,
    })
}
