//! Keys in the store: minted here, kept as SHA-256 digests, revoked softly.
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::store::records::{KeyLimits, KeyRecord};
use crate::store::snapshot::refresh;
use crate::store::{finish_change, new_id, now, Actor, Store, StoreError};

pub(crate) const KEY_COLUMNS: &str = "id, name, owner_id, key_sha256, key_hint, created_at, \
    expires_at, disabled, allowed_models, allowed_operations, requests_per_minute, \
    requests_per_hour, requests_per_day, tokens_per_minute, tokens_per_day, \
    max_concurrent_requests, monthly_token_budget";

/// A freshly minted key: shown to its creator once, never stored.
pub struct MintedKey {
    pub key: String,
    pub sha256: String,
    pub hint: String,
}

/// `llmux_` + 32 url-safe base64 characters of OS randomness (24 bytes).
pub fn mint_key() -> Result<MintedKey, StoreError> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| StoreError::BadRow(format!("no OS randomness: {error}")))?;
    let key = format!(
        "llmux_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hint = key[key.len() - 4..].to_owned();
    Ok(MintedKey {
        sha256: key_sha256(&key),
        key,
        hint,
    })
}

/// Lowercase hex SHA-256 of a key, as key files and the store hold it.
pub fn key_sha256(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What a caller asks for when creating a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub owner_id: Option<String>,
    pub limits: KeyLimits,
}

impl Store {
    /// Mints and stores a key; the plaintext is returned once. A live key with the same name is
    /// a `Conflict`.
    pub async fn create_key(
        &self,
        actor: &Actor,
        new_key: NewKey,
    ) -> Result<(KeyRecord, String), StoreError> {
        let minted = mint_key()?;
        let record = KeyRecord {
            id: new_id()?,
            name: new_key.name,
            owner_id: new_key.owner_id,
            key_sha256: minted.sha256,
            key_hint: minted.hint,
            created_at: now(),
            limits: new_key.limits,
        };
        let audit = actor.audit(
            "key.create",
            &record.id,
            serde_json::json!({"name": record.name, "owner_id": record.owner_id}),
        );
        let stored = record.clone();
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let limits = &stored.limits;
            sqlx::query(&format!(
                "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ))
            .bind(&stored.id)
            .bind(&stored.name)
            .bind(&stored.owner_id)
            .bind(&stored.key_sha256)
            .bind(&stored.key_hint)
            .bind(stored.created_at)
            .bind(limits.expires_at)
            .bind(i64::from(limits.disabled))
            .bind(json_list(&limits.allowed_models))
            .bind(json_list(&limits.allowed_operations))
            .bind(limits.requests_per_minute)
            .bind(limits.requests_per_hour)
            .bind(limits.requests_per_day)
            .bind(limits.tokens_per_minute)
            .bind(limits.tokens_per_day)
            .bind(limits.max_concurrent_requests)
            .bind(limits.monthly_token_budget)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, "a key with this name"))?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await
        })
        .await?;
        Ok((record, minted.key))
    }

    /// Live (not revoked) keys, oldest first; only `owner_id`'s when given.
    pub async fn list_keys(&self, owner_id: Option<String>) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(move |context| async move {
            let rows = match owner_id {
                Some(owner_id) => {
                    sqlx::query(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND owner_id = $1 ORDER BY created_at, id"
                    ))
                    .bind(owner_id)
                    .fetch_all(&context.pool)
                    .await?
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
                    ))
                    .fetch_all(&context.pool)
                    .await?
                }
            };
            rows.iter()
                .map(key_from_row)
                .collect::<Result<_, _>>()
                .map_err(StoreError::from)
        })
        .await
    }

    /// A live key by id.
    pub async fn key(&self, id: String) -> Result<Option<KeyRecord>, StoreError> {
        self.run(move |context| async move {
            let row = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND id = $1"
            ))
            .bind(id)
            .fetch_optional(&context.pool)
            .await?;
            row.as_ref()
                .map(key_from_row)
                .transpose()
                .map_err(StoreError::from)
        })
        .await
    }

    /// Revokes a live key (only one of `owner_id`'s when given); false when there is none.
    pub async fn revoke_key(
        &self,
        actor: &Actor,
        id: String,
        owner_id: Option<String>,
    ) -> Result<bool, StoreError> {
        let audit = actor.audit("key.revoke", &id, serde_json::json!({}));
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let revoked = match owner_id {
                Some(owner_id) => sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND owner_id = $3 AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(&id)
                .bind(owner_id)
                .execute(&mut *transaction)
                .await?,
                None => sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now())
                .bind(&id)
                .execute(&mut *transaction)
                .await?,
            }
            .rows_affected()
                > 0;
            if !revoked {
                return Ok(false);
            }
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await?;
            Ok(true)
        })
        .await
    }

    /// Replaces a live key's limits; false when there is no such key.
    pub async fn update_key_limits(
        &self,
        actor: &Actor,
        id: String,
        limits: KeyLimits,
    ) -> Result<bool, StoreError> {
        let audit = actor.audit("key.update", &id, limits_detail(&limits));
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE api_keys SET expires_at = $1, disabled = $2, allowed_models = $3, \
                 allowed_operations = $4, requests_per_minute = $5, requests_per_hour = $6, \
                 requests_per_day = $7, tokens_per_minute = $8, tokens_per_day = $9, \
                 max_concurrent_requests = $10, monthly_token_budget = $11 \
                 WHERE id = $12 AND revoked_at IS NULL",
            )
            .bind(limits.expires_at)
            .bind(i64::from(limits.disabled))
            .bind(json_list(&limits.allowed_models))
            .bind(json_list(&limits.allowed_operations))
            .bind(limits.requests_per_minute)
            .bind(limits.requests_per_hour)
            .bind(limits.requests_per_day)
            .bind(limits.tokens_per_minute)
            .bind(limits.tokens_per_day)
            .bind(limits.max_concurrent_requests)
            .bind(limits.monthly_token_budget)
            .bind(&id)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
                > 0;
            if !updated {
                return Ok(false);
            }
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await?;
            Ok(true)
        })
        .await
    }
}

fn limits_detail(limits: &KeyLimits) -> serde_json::Value {
    serde_json::json!({
        "expires_at": limits.expires_at,
        "disabled": limits.disabled,
        "allowed_models": limits.allowed_models,
        "allowed_operations": limits.allowed_operations,
        "requests_per_minute": limits.requests_per_minute,
        "requests_per_hour": limits.requests_per_hour,
        "requests_per_day": limits.requests_per_day,
        "tokens_per_minute": limits.tokens_per_minute,
        "tokens_per_day": limits.tokens_per_day,
        "max_concurrent_requests": limits.max_concurrent_requests,
        "monthly_token_budget": limits.monthly_token_budget,
    })
}

fn json_list(list: &Option<Vec<String>>) -> Option<String> {
    list.as_ref()
        .map(|items| serde_json::Value::from(items.clone()).to_string())
}

fn parse_list(text: Option<String>) -> Result<Option<Vec<String>>, sqlx::Error> {
    text.map(|text| {
        serde_json::from_str(&text).map_err(|error| sqlx::Error::Decode(Box::new(error)))
    })
    .transpose()
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        key_sha256: row.try_get("key_sha256")?,
        key_hint: row.try_get("key_hint")?,
        created_at: row.try_get("created_at")?,
        limits: KeyLimits {
            expires_at: row.try_get("expires_at")?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
            allowed_models: parse_list(row.try_get("allowed_models")?)?,
            allowed_operations: parse_list(row.try_get("allowed_operations")?)?,
            requests_per_minute: row.try_get("requests_per_minute")?,
            requests_per_hour: row.try_get("requests_per_hour")?,
            requests_per_day: row.try_get("requests_per_day")?,
            tokens_per_minute: row.try_get("tokens_per_minute")?,
            tokens_per_day: row.try_get("tokens_per_day")?,
            max_concurrent_requests: row.try_get("max_concurrent_requests")?,
            monthly_token_budget: row.try_get("monthly_token_budget")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_the_shared_shape() {
        let minted = mint_key().unwrap();
        assert!(minted.key.starts_with("llmux_"));
        assert_eq!(minted.key.len(), "llmux_".len() + 32);
        assert!(minted
            .key
            .trim_start_matches("llmux_")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(minted.sha256, key_sha256(&minted.key));
        assert_eq!(minted.sha256.len(), 64);
        assert!(minted.key.ends_with(&minted.hint));
        assert_ne!(mint_key().unwrap().key, minted.key);
    }
}
