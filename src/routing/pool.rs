//! A pool: every endpoint that serves one (exposed model, path), in load order.
use std::sync::Arc;

use super::endpoint::Endpoint;

#[derive(Debug)]
pub struct Pool {
    members: Box<[Arc<Endpoint>]>,
}

impl Pool {
    /// Builds a pool. Callers guarantee at least one member.
    pub fn new(members: Vec<Arc<Endpoint>>) -> Option<Self> {
        (!members.is_empty()).then(|| Self {
            members: members.into_boxed_slice(),
        })
    }

    pub fn members(&self) -> &[Arc<Endpoint>] {
        &self.members
    }

    /// The endpoint that serves the next request: the first member loaded.
    pub fn pick(&self) -> &Arc<Endpoint> {
        &self.members[0]
    }
}
