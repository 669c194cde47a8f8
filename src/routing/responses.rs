//! Which endpoint created each Responses API response llmux forwarded: `GET /v1/responses/{id}`
//! and friends name no model, so they go where the response was created. Bounded in count and
//! age; pure, no IO.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;
use super::table::RoutingTable;

/// How many response ids are remembered; the oldest go first.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How long an id is remembered (OpenAI keeps stored responses for 30 days).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug)]
pub struct ResponseOwners {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Owners>,
}

#[derive(Debug, Default)]
struct Owners {
    by_id: HashMap<Box<str>, (Arc<Endpoint>, Instant)>,
    /// Ids in insertion order, for eviction; an id re-inserted later has a stale entry here.
    order: VecDeque<(Box<str>, Instant)>,
}

impl Default for ResponseOwners {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl ResponseOwners {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            inner: Mutex::default(),
        }
    }

    /// Remembers that `endpoint` created response `id`. Ids that could not sit in a URL path
    /// segment as they are are not remembered (no upstream makes such ids).
    pub fn remember(&self, id: &str, endpoint: &Arc<Endpoint>) {
        if !is_plain_id(id) {
            return;
        }
        let now = Instant::now();
        let mut owners = self.lock();
        owners.by_id.insert(id.into(), (Arc::clone(endpoint), now));
        owners.order.push_back((id.into(), now));
        while let Some((oldest, at)) = owners.order.front() {
            let expired = now.duration_since(*at) > self.ttl;
            if !expired && owners.by_id.len() <= self.capacity {
                break;
            }
            let current = owners.by_id.get(oldest).is_some_and(|(_, t)| t == at);
            if current {
                let oldest = oldest.clone();
                owners.by_id.remove(&oldest);
            }
            owners.order.pop_front();
        }
    }

    /// The endpoint that created `id`, if it is remembered and not expired.
    pub fn creator(&self, id: &str) -> Option<Arc<Endpoint>> {
        let owners = self.lock();
        let (endpoint, at) = owners.by_id.get(id)?;
        (at.elapsed() <= self.ttl).then(|| Arc::clone(endpoint))
    }

    pub fn forget(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The current version of a remembered endpoint: after a reload, the member of its model's pool
/// on the same upstream (fresh key and headers); the remembered one when the config dropped it,
/// since the response still lives on that upstream.
pub fn current(table: &RoutingTable, remembered: &Arc<Endpoint>) -> Arc<Endpoint> {
    table
        .lookup(&remembered.exposed_model)
        .and_then(|routes| {
            let pool = routes.pool(&remembered.path)?;
            pool.members()
                .iter()
                .find(|member| same_upstream(member, remembered))
                .cloned()
        })
        .unwrap_or_else(|| Arc::clone(remembered))
}

/// Whether two endpoints reach the same upstream store of responses.
pub fn same_upstream(a: &Endpoint, b: &Endpoint) -> bool {
    std::ptr::eq(a, b) || (a.provider == b.provider && a.base_url == b.base_url)
}

/// Whether `id` can sit in a URL path segment as it is (every upstream's ids can).
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::endpoint::tests::endpoint;

    #[test]
    fn ids_are_bounded_in_count_oldest_first() {
        let owners = ResponseOwners::new(2, DEFAULT_TTL);
        let e = Arc::new(endpoint("a.json", "m", "v1/responses", "t"));
        for id in ["resp_1", "resp_2", "resp_3"] {
            owners.remember(id, &e);
        }
        assert!(owners.creator("resp_1").is_none());
        assert!(owners.creator("resp_2").is_some());
        assert!(owners.creator("resp_3").is_some());
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn expired_and_odd_ids_are_not_found() {
        let owners = ResponseOwners::new(10, Duration::ZERO);
        let e = Arc::new(endpoint("a.json", "m", "v1/responses", "t"));
        owners.remember("resp_1", &e);
        std::thread::sleep(Duration::from_millis(5));
        assert!(owners.creator("resp_1").is_none());
        let owners = ResponseOwners::default();
        owners.remember("../admin", &e);
        owners.remember("", &e);
        assert!(owners.is_empty());
        owners.remember("resp_2", &e);
        owners.forget("resp_2");
        assert!(owners.creator("resp_2").is_none());
    }
}
