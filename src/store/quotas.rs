//! Quota policies (per api path and model), their per-owner overrides, and protected endpoints.
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::store::records::{
    ProtectedEndpoint, QuotaOverride, QuotaOverrideFields, QuotaPolicy, QuotaPolicyFields,
    WindowType,
};
use crate::store::snapshot::{endpoint_from_row, refresh};
use crate::store::{finish_change, new_id, now, Actor, Store, StoreError};

pub(crate) const POLICY_COLUMNS: &str =
    "id, api_path, model, window_type, request_limit, enforce_per_user, created_at";
pub(crate) const OVERRIDE_COLUMNS: &str = "id, api_path, model, owner_id, window_type, \
    request_limit, exempt, starts_at, ends_at, created_at";

const POLICY_CONFLICT: &str = "a quota policy for this api_path and model";
const OVERRIDE_CONFLICT: &str = "a quota override for this api_path, model and owner_id";
const ENDPOINT_CONFLICT: &str = "this protected endpoint";

impl Store {
    pub async fn list_quota_policies(&self) -> Result<Vec<QuotaPolicy>, StoreError> {
        self.list_rows(
            format!("SELECT {POLICY_COLUMNS} FROM quota_policies ORDER BY created_at, id"),
            policy_from_row,
        )
        .await
    }

    /// Every row `select` reads, each turned into a record by `from_row`.
    async fn list_rows<T: Send + 'static>(
        &self,
        select: String,
        from_row: fn(&AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, StoreError> {
        self.run(move |context| async move {
            sqlx::query(&select)
                .fetch_all(&context.pool)
                .await?
                .iter()
                .map(from_row)
                .collect::<Result<_, _>>()
                .map_err(StoreError::from)
        })
        .await
    }

    pub async fn create_quota_policy(
        &self,
        actor: &Actor,
        fields: QuotaPolicyFields,
    ) -> Result<QuotaPolicy, StoreError> {
        let policy = QuotaPolicy {
            id: new_id()?,
            fields,
            created_at: now(),
        };
        let audit = actor.audit(
            "quota_policy.create",
            &policy.id,
            policy_detail(&policy.fields),
        );
        let stored = policy.clone();
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO quota_policies ({POLICY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(&stored.id)
            .bind(&stored.fields.api_path)
            .bind(&stored.fields.model)
            .bind(stored.fields.window_type.as_str())
            .bind(stored.fields.request_limit)
            .bind(i64::from(stored.fields.enforce_per_user))
            .bind(stored.created_at)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, POLICY_CONFLICT))?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await
        })
        .await?;
        Ok(policy)
    }

    /// `None` when there is no such policy.
    pub async fn update_quota_policy(
        &self,
        actor: &Actor,
        id: String,
        fields: QuotaPolicyFields,
    ) -> Result<Option<QuotaPolicy>, StoreError> {
        let audit = actor.audit("quota_policy.update", &id, policy_detail(&fields));
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE quota_policies SET api_path = $1, model = $2, window_type = $3, \
                 request_limit = $4, enforce_per_user = $5 WHERE id = $6",
            )
            .bind(&fields.api_path)
            .bind(&fields.model)
            .bind(fields.window_type.as_str())
            .bind(fields.request_limit)
            .bind(i64::from(fields.enforce_per_user))
            .bind(&id)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, POLICY_CONFLICT))?
            .rows_affected();
            if updated == 0 {
                return Ok(None);
            }
            let row = sqlx::query(&format!(
                "SELECT {POLICY_COLUMNS} FROM quota_policies WHERE id = $1"
            ))
            .bind(&id)
            .fetch_one(&mut *transaction)
            .await?;
            let policy = policy_from_row(&row)?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await?;
            Ok(Some(policy))
        })
        .await
    }

    pub async fn delete_quota_policy(&self, actor: &Actor, id: String) -> Result<bool, StoreError> {
        self.delete_row(actor, "quota_policies", "quota_policy.delete", id)
            .await
    }

    pub async fn list_quota_overrides(&self) -> Result<Vec<QuotaOverride>, StoreError> {
        self.list_rows(
            format!("SELECT {OVERRIDE_COLUMNS} FROM quota_overrides ORDER BY created_at, id"),
            override_from_row,
        )
        .await
    }

    pub async fn create_quota_override(
        &self,
        actor: &Actor,
        fields: QuotaOverrideFields,
    ) -> Result<QuotaOverride, StoreError> {
        let quota_override = QuotaOverride {
            id: new_id()?,
            fields,
            created_at: now(),
        };
        let audit = actor.audit(
            "quota_override.create",
            &quota_override.id,
            override_detail(&quota_override.fields),
        );
        let stored = quota_override.clone();
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let fields = &stored.fields;
            sqlx::query(&format!(
                "INSERT INTO quota_overrides ({OVERRIDE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(&stored.id)
            .bind(&fields.api_path)
            .bind(&fields.model)
            .bind(&fields.owner_id)
            .bind(fields.window_type.as_str())
            .bind(fields.request_limit)
            .bind(i64::from(fields.exempt))
            .bind(fields.starts_at)
            .bind(fields.ends_at)
            .bind(stored.created_at)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, OVERRIDE_CONFLICT))?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await
        })
        .await?;
        Ok(quota_override)
    }

    /// `None` when there is no such override.
    pub async fn update_quota_override(
        &self,
        actor: &Actor,
        id: String,
        fields: QuotaOverrideFields,
    ) -> Result<Option<QuotaOverride>, StoreError> {
        let audit = actor.audit("quota_override.update", &id, override_detail(&fields));
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE quota_overrides SET api_path = $1, model = $2, owner_id = $3, \
                 window_type = $4, request_limit = $5, exempt = $6, starts_at = $7, ends_at = $8 \
                 WHERE id = $9",
            )
            .bind(&fields.api_path)
            .bind(&fields.model)
            .bind(&fields.owner_id)
            .bind(fields.window_type.as_str())
            .bind(fields.request_limit)
            .bind(i64::from(fields.exempt))
            .bind(fields.starts_at)
            .bind(fields.ends_at)
            .bind(&id)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, OVERRIDE_CONFLICT))?
            .rows_affected();
            if updated == 0 {
                return Ok(None);
            }
            let row = sqlx::query(&format!(
                "SELECT {OVERRIDE_COLUMNS} FROM quota_overrides WHERE id = $1"
            ))
            .bind(&id)
            .fetch_one(&mut *transaction)
            .await?;
            let quota_override = override_from_row(&row)?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await?;
            Ok(Some(quota_override))
        })
        .await
    }

    pub async fn delete_quota_override(
        &self,
        actor: &Actor,
        id: String,
    ) -> Result<bool, StoreError> {
        self.delete_row(actor, "quota_overrides", "quota_override.delete", id)
            .await
    }

    pub async fn list_protected_endpoints(&self) -> Result<Vec<ProtectedEndpoint>, StoreError> {
        self.list_rows(
            "SELECT id, path, method, created_at FROM protected_endpoints ORDER BY created_at, id"
                .to_owned(),
            endpoint_from_row,
        )
        .await
    }

    /// `path` and `method` as given: the caller normalizes them.
    pub async fn create_protected_endpoint(
        &self,
        actor: &Actor,
        path: String,
        method: String,
    ) -> Result<ProtectedEndpoint, StoreError> {
        let endpoint = ProtectedEndpoint {
            id: new_id()?,
            path,
            method,
            created_at: now(),
        };
        let audit = actor.audit(
            "protected_endpoint.create",
            &endpoint.id,
            serde_json::json!({"path": endpoint.path, "method": endpoint.method}),
        );
        let stored = endpoint.clone();
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            sqlx::query(
                "INSERT INTO protected_endpoints (id, path, method, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&stored.id)
            .bind(&stored.path)
            .bind(&stored.method)
            .bind(stored.created_at)
            .execute(&mut *transaction)
            .await
            .map_err(|error| StoreError::from_write(error, ENDPOINT_CONFLICT))?;
            finish_change(&mut transaction, &audit).await?;
            transaction.commit().await?;
            refresh(&context).await
        })
        .await?;
        Ok(endpoint)
    }

    pub async fn delete_protected_endpoint(
        &self,
        actor: &Actor,
        id: String,
    ) -> Result<bool, StoreError> {
        self.delete_row(
            actor,
            "protected_endpoints",
            "protected_endpoint.delete",
            id,
        )
        .await
    }

    /// `table` is one of this file's constants, never caller input.
    async fn delete_row(
        &self,
        actor: &Actor,
        table: &'static str,
        action: &'static str,
        id: String,
    ) -> Result<bool, StoreError> {
        let audit = actor.audit(action, &id, serde_json::json!({}));
        self.run(move |context| async move {
            let mut transaction = context.pool.begin().await?;
            let deleted = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
                .bind(&id)
                .execute(&mut *transaction)
                .await?
                .rows_affected()
                > 0;
            if !deleted {
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

fn policy_detail(fields: &QuotaPolicyFields) -> serde_json::Value {
    serde_json::json!({
        "api_path": fields.api_path,
        "model": fields.model,
        "window_type": fields.window_type.as_str(),
        "request_limit": fields.request_limit,
        "enforce_per_user": fields.enforce_per_user,
    })
}

fn override_detail(fields: &QuotaOverrideFields) -> serde_json::Value {
    serde_json::json!({
        "api_path": fields.api_path,
        "model": fields.model,
        "owner_id": fields.owner_id,
        "window_type": fields.window_type.as_str(),
        "request_limit": fields.request_limit,
        "exempt": fields.exempt,
        "starts_at": fields.starts_at,
        "ends_at": fields.ends_at,
    })
}

fn window_type(row: &AnyRow) -> Result<WindowType, sqlx::Error> {
    let text: String = row.try_get("window_type")?;
    WindowType::parse(&text).ok_or_else(|| {
        sqlx::Error::Decode(format!("unknown window_type `{text}` in the store").into())
    })
}

pub(crate) fn policy_from_row(row: &AnyRow) -> Result<QuotaPolicy, sqlx::Error> {
    Ok(QuotaPolicy {
        id: row.try_get("id")?,
        fields: QuotaPolicyFields {
            api_path: row.try_get("api_path")?,
            model: row.try_get("model")?,
            window_type: window_type(row)?,
            request_limit: row.try_get("request_limit")?,
            enforce_per_user: row.try_get::<i64, _>("enforce_per_user")? != 0,
        },
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn override_from_row(row: &AnyRow) -> Result<QuotaOverride, sqlx::Error> {
    Ok(QuotaOverride {
        id: row.try_get("id")?,
        fields: QuotaOverrideFields {
            api_path: row.try_get("api_path")?,
            model: row.try_get("model")?,
            owner_id: row.try_get("owner_id")?,
            window_type: window_type(row)?,
            request_limit: row.try_get("request_limit")?,
            exempt: row.try_get::<i64, _>("exempt")? != 0,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
        },
        created_at: row.try_get("created_at")?,
    })
}
