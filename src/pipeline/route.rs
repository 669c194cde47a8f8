//! route: the routing table gives the model's routes, the operation's route gives the pool (kept
//! in the returned [`Routed`], never looked up again), and the Responses API's stored-response
//! ids pin the member that owns them. The response-id lookups (`sticky_member`, `by_response_id`)
//! and the tap that learns new ids (`capture_response_id`) are the only places that touch
//! `ResponseOwners`.
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::http::{header, Uri};
use actix_web::HttpResponse;

use super::operation::Operation;
use crate::errors::ApiError;
use crate::proxy::capture::{AnswerKind, CaptureResponseId};
use crate::routing::endpoint::Endpoint;
use crate::routing::pool::Pool;
use crate::routing::responses::{current, same_upstream, ResponseOwners};
use crate::routing::table::{ModelRoutes, RoutingTable};

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
pub fn route(
    table: &RoutingTable,
    owners: &ResponseOwners,
    operation: Operation,
    model: &str,
    previous_response_id: Option<&str>,
) -> Result<Routed, ApiError> {
    let routes = table.lookup(model).ok_or_else(|| ApiError::UnknownModel {
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
        routed.sticky =
            previous_response_id.and_then(|id| sticky_member(owners, routed.pool(), id));
    }
    Ok(routed)
}

/// The member of `pool` on the upstream that created response `id`.
fn sticky_member(owners: &ResponseOwners, pool: &Pool, id: &str) -> Option<usize> {
    let creator = owners.creator(id)?;
    pool.members()
        .iter()
        .position(|member| same_upstream(member, &creator))
}

/// The endpoint that owns stored response `id` (its current version after reloads), for the
/// calls that name only the id.
pub fn by_response_id(
    table: &RoutingTable,
    owners: &ResponseOwners,
    id: &str,
) -> Result<Arc<Endpoint>, ApiError> {
    let remembered = owners
        .creator(id)
        .ok_or_else(|| ApiError::UnknownResponse { id: id.to_owned() })?;
    Ok(current(table, &remembered))
}

/// The response tap that remembers which endpoint created the response a successful Responses
/// API answer carries (JSON or stream); other answers pass as they are.
pub fn capture_response_id(
    response: HttpResponse,
    endpoint: &Arc<Endpoint>,
    owners: &Arc<ResponseOwners>,
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
