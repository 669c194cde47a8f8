//! route: the routing table gives the model's routes, the operation's route gives the pool (kept
//! in the returned [`Routed`], never looked up again), and the Responses API's stored-response
//! ids pin the member that owns them. The response-id lookups (`sticky_member`, `by_response_id`)
//! and the tap that learns new ids (`capture_response_id`) are the only places that touch
//! the id owners (`shared::owners`: this replica's memory, or Redis shared by every replica).
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::http::{header, Uri};
use actix_web::HttpResponse;

use super::operation::Operation;
use crate::errors::ApiError;
use crate::proxy::capture::{AnswerKind, CaptureResponseId};
use crate::routing::endpoint::Endpoint;
use crate::routing::families::{
    Family, PASSTHROUGH_MODEL, PASSTHROUGH_PATH, RESERVED_MODEL_PREFIX,
};
use crate::routing::pool::Pool;
use crate::routing::responses::same_upstream;
use crate::routing::table::{ModelRoutes, RoutingTable};
use crate::shared::owners::{IdFamily, IdOwners};

/// Where a request goes: one version of its model's routes, the route that serves it, and the
/// member every attempt must use when one is pinned.
#[derive(Debug)]
pub struct Routed {
    pub routes: Arc<ModelRoutes>,
    /// Index of the serving route in `routes.routes`.
    route: usize,
    /// The upstream path when it is not the route's own (`v1/responses/input_tokens` served by
    /// the `v1/responses` route).
    pub upstream_path: Option<&'static str>,
    /// The pool member that created the response this request continues: no other could
    /// answer it.
    pub sticky: Option<usize>,
}

impl Routed {
    /// The pool of the serving route.
    pub fn pool(&self) -> &Pool {
        &self.routes.routes[self.route].pool
    }

    /// The member's URI for this request.
    pub fn uri_for(&self, member: &Endpoint) -> Result<Uri, ApiError> {
        upstream_uri(member, self.upstream_path)
    }
}

/// Routes `operation` for `model`. `previous_response_id`, when the operation continues stored
/// responses, pins the member that created it (when it is in the pool; the pool's pick applies
/// otherwise).
pub async fn route(
    table: &RoutingTable,
    owners: &dyn IdOwners,
    operation: Operation,
    model: &str,
    previous_response_id: Option<&str>,
) -> Result<Routed, ApiError> {
    // Family and passthrough endpoints sit in the table under reserved names no client uses.
    let routes = table
        .lookup(model)
        .filter(|_| !model.starts_with(RESERVED_MODEL_PREFIX))
        .ok_or_else(|| ApiError::UnknownModel {
            model: model.to_owned(),
        })?;
    let position = |path: &str| routes.routes.iter().position(|r| &*r.path == path);
    let (route, upstream_path) = match position(operation.path()) {
        Some(route) => (route, None),
        None => match operation
            .parent()
            .and_then(|parent| position(parent.path()))
        {
            Some(route) => (route, Some(operation.path())),
            None => {
                return Err(ApiError::ModelNotOnPath {
                    model: model.to_owned(),
                    path: operation.path().to_owned(),
                    served: routes.served_paths(),
                })
            }
        },
    };
    let mut routed = Routed {
        routes,
        route,
        upstream_path,
        sticky: None,
    };
    if operation.continues_responses() {
        if let Some(id) = previous_response_id {
            routed.sticky = sticky_member(owners, table, routed.pool(), id).await;
        }
    }
    Ok(routed)
}

/// The member of `pool` on the upstream that created response `id`.
async fn sticky_member(
    owners: &dyn IdOwners,
    table: &RoutingTable,
    pool: &Pool,
    id: &str,
) -> Option<usize> {
    let creator = owners.owner(IdFamily::Responses, id, table).await?;
    pool.members()
        .iter()
        .position(|member| same_upstream(member, &creator))
}

/// The endpoint that owns stored response `id` (its current version after reloads), for the
/// calls that name only the id.
pub async fn by_response_id(
    table: &RoutingTable,
    owners: &dyn IdOwners,
    id: &str,
) -> Result<Arc<Endpoint>, ApiError> {
    if !is_plain_path_segment(id) {
        return Err(ApiError::invalid_request(
            "A response id is a plain URL path segment: up to 256 letters, digits, `-`, `_`, `.` or `~`, and neither `.` nor `..`.",
            None,
        ));
    }
    owners
        .owner(IdFamily::Responses, id, table)
        .await
        .ok_or_else(|| ApiError::UnknownResponse { id: id.to_owned() })
}

/// Whether `id` (decoded from the URL) goes back into an upstream URL path as one segment, as
/// it is (issue 20: `.` and `..` reached the upstream as `/v1/responses/..`).
pub fn is_plain_path_segment(id: &str) -> bool {
    !matches!(id, "" | "." | "..")
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// The response tap that remembers which endpoint created the response a successful Responses
/// API answer carries (JSON or stream); other answers pass as they are.
pub fn capture_response_id(
    response: HttpResponse,
    endpoint: &Arc<Endpoint>,
    owners: &Arc<dyn IdOwners>,
) -> HttpResponse {
    if !response.status().is_success() {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let kind = match content_type.map(|v| v.as_bytes()) {
        Some(v) if v.starts_with(b"text/event-stream") => AnswerKind::EventStream,
        Some(v) if v.starts_with(b"application/json") => AnswerKind::Json,
        _ => return response,
    };
    let (owners, endpoint) = (Arc::clone(owners), Arc::clone(endpoint));
    response
        .map_body(move |_, body| BoxBody::new(CaptureResponseId::new(body, kind, owners, endpoint)))
}

/// The member's URI for the route's own path (`None`) or for another path on the same upstream.
pub fn upstream_uri(member: &Endpoint, path: Option<&str>) -> Result<Uri, ApiError> {
    match path {
        None => Ok(member.upstream_uri.clone()),
        Some(path) => member
            .uri_for(path)
            .map_err(|e| ApiError::Internal(e.to_string())),
    }
}

/// What a model-less family request names to route it by.
#[derive(Debug, Default)]
pub struct FamilyTarget<'a> {
    /// Ids in the path, then ids the body references, in order: the first one llmux knows the
    /// owner of decides.
    pub ids: Vec<&'a str>,
    /// A creation's `model`: it goes to that model's provider when it serves the family.
    pub model: Option<&'a str>,
    /// Whether a request naming nothing llmux knows creates something (spread over the
    /// family's providers) rather than lists (always the first provider: a list is one
    /// provider's, since its cursors are that provider's ids).
    pub creates: bool,
}

/// The endpoint serving a family request: the owner of the first known id, else the provider
/// of the named model, else the pool's pick (creations) or its first member (lists and ids
/// created elsewhere).
pub async fn family(
    table: &RoutingTable,
    owners: &dyn IdOwners,
    family: Family,
    target: &FamilyTarget<'_>,
) -> Result<Arc<Endpoint>, ApiError> {
    let not_served = || ApiError::FamilyNotServed {
        family: family.name(),
        path: family.path(),
    };
    let routes = table.lookup(family.table_model()).ok_or_else(not_served)?;
    let pool = routes.pool(family.path()).ok_or_else(not_served)?;
    Ok(pick_member(table, owners, pool, target).await)
}

/// The endpoint of a provider with `"passthrough": true` (the first configured).
pub fn passthrough(table: &RoutingTable) -> Option<Arc<Endpoint>> {
    let routes = table.lookup(PASSTHROUGH_MODEL)?;
    let pool = routes.pool(PASSTHROUGH_PATH)?;
    pool.members().first().cloned()
}

/// The endpoint that created object `id` (a file, a batch, a response, ...), if llmux saw it
/// created. The one place family routing reads the owner map, so moving it behind the replicas'
/// shared store changes this function only.
pub async fn owner_of(
    owners: &dyn IdOwners,
    table: &RoutingTable,
    id: &str,
) -> Option<Arc<Endpoint>> {
    // Family ids share the Responses namespace: OpenAI's ids carry their kind (`file-`,
    // `batch_`, `vs_`, `resp_`), so they never collide.
    owners.owner(IdFamily::Responses, id, table).await
}

async fn pick_member(
    table: &RoutingTable,
    owners: &dyn IdOwners,
    pool: &Pool,
    target: &FamilyTarget<'_>,
) -> Arc<Endpoint> {
    let members = pool.members();
    for id in &target.ids {
        let Some(creator) = owner_of(owners, table, id).await else {
            continue;
        };
        if let Some(member) = members.iter().find(|m| same_upstream(m, &creator)) {
            return Arc::clone(member);
        }
    }
    let model_member = target
        .model
        .filter(|model| !model.starts_with(RESERVED_MODEL_PREFIX))
        .and_then(|model| table.lookup(model))
        .and_then(|routes| {
            routes.routes.iter().find_map(|route| {
                route.pool.members().iter().find_map(|endpoint| {
                    members
                        .iter()
                        .find(|m| same_upstream(m, endpoint) || m.provider == endpoint.provider)
                })
            })
        });
    if let Some(member) = model_member {
        return Arc::clone(member);
    }
    // A pool is never empty (`Pool::new` refuses that).
    let index = if target.creates { pool.select() } else { 0 };
    Arc::clone(&members[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_that_are_not_plain_path_segments_are_refused() {
        for id in ["resp_1", "resp-abc.def~2", "a..b"] {
            assert!(is_plain_path_segment(id), "{id}");
        }
        let long = "a".repeat(257);
        for id in [
            "",
            ".",
            "..",
            "../admin",
            "a/b",
            "a%2Fb",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!is_plain_path_segment(id), "{id}");
        }
    }
}
