//! Which endpoint made an id, for the calls that name only the id (`GET /v1/responses/{id}`,
//! `previous_response_id`): in this replica's memory, and with Redis in every replica's.
//!
//! Redis holds an [`Owner`] (model, path, provider, base URL), not an endpoint: each replica
//! resolves it against its own routing table, so keys and headers never leave the process.
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::connection::{Redis, SharedStateError};
use crate::routing::endpoint::Endpoint;
use crate::routing::responses::{current, is_plain_id, ResponseOwners};
use crate::routing::table::RoutingTable;

/// A family of ids routed to where they were made. Each has its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFamily {
    /// Responses API response ids (`resp_...`).
    Responses,
}

impl IdFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Responses => "responses",
        }
    }
}

/// Where an id was made, in words every replica can resolve against its own table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub model: String,
    pub path: String,
    pub provider: String,
    pub base_url: String,
}

impl Owner {
    pub fn of(endpoint: &Endpoint) -> Self {
        Self {
            model: endpoint.exposed_model.to_string(),
            path: endpoint.path.to_string(),
            provider: endpoint.provider.to_string(),
            base_url: endpoint.base_url.to_string(),
        }
    }

    /// This replica's endpoint for the owner: the member of the model's pool on the same
    /// upstream. `None` when this replica's config has no such member.
    pub fn resolve(&self, table: &RoutingTable) -> Option<Arc<Endpoint>> {
        let routes = table.lookup(&self.model)?;
        let pool = routes.pool(&self.path)?;
        pool.members()
            .iter()
            .find(|member| *member.provider == *self.provider && *member.base_url == *self.base_url)
            .cloned()
    }
}

/// Id -> owner, shared as widely as the implementation reaches.
pub trait IdOwners: Send + Sync {
    /// Remembers that `endpoint` made `id`. Ids that could not sit in a URL path segment as they
    /// are are not remembered (no upstream makes such ids).
    fn remember<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        endpoint: &'a Arc<Endpoint>,
    ) -> BoxFuture<'a, ()>;

    /// The current endpoint that made `id`, if it is remembered.
    fn owner<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        table: &'a RoutingTable,
    ) -> BoxFuture<'a, Option<Arc<Endpoint>>>;

    fn forget<'a>(&'a self, family: IdFamily, id: &'a str) -> BoxFuture<'a, ()>;
}

/// One replica's memory: bounded in count and age ([`ResponseOwners`]).
#[derive(Debug, Default)]
pub struct MemoryOwners {
    responses: ResponseOwners,
}

impl MemoryOwners {
    pub fn new(owners: ResponseOwners) -> Self {
        Self { responses: owners }
    }

    fn of(&self, family: IdFamily) -> &ResponseOwners {
        match family {
            IdFamily::Responses => &self.responses,
        }
    }

    pub fn remember_now(&self, family: IdFamily, id: &str, endpoint: &Arc<Endpoint>) {
        self.of(family).remember(id, endpoint);
    }

    pub fn owner_now(
        &self,
        family: IdFamily,
        id: &str,
        table: &RoutingTable,
    ) -> Option<Arc<Endpoint>> {
        let remembered = self.of(family).creator(id)?;
        Some(current(table, &remembered))
    }

    pub fn forget_now(&self, family: IdFamily, id: &str) {
        self.of(family).forget(id);
    }
}

impl IdOwners for MemoryOwners {
    fn remember<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        endpoint: &'a Arc<Endpoint>,
    ) -> BoxFuture<'a, ()> {
        self.remember_now(family, id, endpoint);
        Box::pin(std::future::ready(()))
    }

    fn owner<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        table: &'a RoutingTable,
    ) -> BoxFuture<'a, Option<Arc<Endpoint>>> {
        Box::pin(std::future::ready(self.owner_now(family, id, table)))
    }

    fn forget<'a>(&'a self, family: IdFamily, id: &'a str) -> BoxFuture<'a, ()> {
        self.forget_now(family, id);
        Box::pin(std::future::ready(()))
    }
}

/// Every replica's: Redis (`llmux:id:{family}:{id}` -> owner JSON, with a TTL), in front of
/// this replica's memory, which answers first and is what is left while Redis is unreachable.
pub struct RedisOwners {
    redis: Redis,
    local: MemoryOwners,
    ttl: Duration,
}

impl RedisOwners {
    pub fn new(redis: Redis, local: MemoryOwners, ttl: Duration) -> Self {
        Self { redis, local, ttl }
    }

    async fn remember_shared(
        &self,
        family: IdFamily,
        id: &str,
        endpoint: &Endpoint,
    ) -> Result<(), SharedStateError> {
        let owner = serde_json::to_string(&Owner::of(endpoint))
            .map_err(|error| SharedStateError::Corrupt(error.to_string()))?;
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let key = key(family, id);
        self.redis
            .run("remember_id", |mut connection| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(owner)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
    }

    async fn owner_shared(
        &self,
        family: IdFamily,
        id: &str,
        table: &RoutingTable,
    ) -> Result<Option<Arc<Endpoint>>, SharedStateError> {
        let key = key(family, id);
        let text: Option<String> = self
            .redis
            .run("find_id", |mut connection| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let owner: Owner = serde_json::from_str(&text)
            .map_err(|error| SharedStateError::Corrupt(error.to_string()))?;
        Ok(owner.resolve(table))
    }
}

impl IdOwners for RedisOwners {
    fn remember<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        endpoint: &'a Arc<Endpoint>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !is_plain_id(id) {
                return;
            }
            self.local.remember_now(family, id, endpoint);
            if let Err(error) = self.remember_shared(family, id, endpoint).await {
                tracing::debug!(id, error = %error, "id kept by this replica only");
            }
        })
    }

    fn owner<'a>(
        &'a self,
        family: IdFamily,
        id: &'a str,
        table: &'a RoutingTable,
    ) -> BoxFuture<'a, Option<Arc<Endpoint>>> {
        Box::pin(async move {
            if let Some(endpoint) = self.local.owner_now(family, id, table) {
                return Some(endpoint);
            }
            if !is_plain_id(id) {
                return None;
            }
            match self.owner_shared(family, id, table).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::debug!(id, error = %error, "id looked up in this replica only");
                    None
                }
            }
        })
    }

    fn forget<'a>(&'a self, family: IdFamily, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.local.forget_now(family, id);
            if !is_plain_id(id) {
                return;
            }
            let key = key(family, id);
            let deleted = self
                .redis
                .run("forget_id", |mut connection| async move {
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async::<()>(&mut connection)
                        .await
                })
                .await;
            if let Err(error) = deleted {
                tracing::debug!(id, error = %error, "id forgotten by this replica only");
            }
        })
    }
}

fn key(family: IdFamily, id: &str) -> String {
    format!("llmux:id:{}:{id}", family.as_str())
}
