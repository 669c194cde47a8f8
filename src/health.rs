//! Per-model health: probes each endpoint's health URL within its health_timeout, caches results
//! for a short TTL and lets concurrent probes of the same URL share one upstream request.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Uri;
use serde::Serialize;
use tokio::sync::watch;

use crate::routing::endpoint::Endpoint;
use crate::routing::table::ModelRoutes;
use crate::upstream::UpstreamClients;

/// What one probe found. Messages name the URL's failure, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub up: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// The probes of every health URL, shared by all workers.
#[derive(Debug)]
pub struct HealthProbes {
    ttl: Duration,
    probes: Mutex<HashMap<ProbeKey, Probe>>,
}

/// Endpoints with the same URL, key and timeout share a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    uri: Uri,
    /// The provider's key in the header it goes in (`Authorization`, Azure's `api-key`, ...).
    auth_header: HeaderName,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

#[derive(Debug)]
enum Probe {
    /// A probe in flight: its result arrives on this channel.
    Running(watch::Receiver<Option<ProbeResult>>),
    Done {
        finished: Instant,
        result: ProbeResult,
    },
}

impl HealthProbes {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// The health of the endpoint's URL: a cached result younger than the TTL, the result of a
    /// probe already in flight, or a new probe. The probe runs as its own task on this worker so
    /// a client that hangs up does not cancel it for the others waiting on it.
    pub async fn probe(
        self: &Arc<Self>,
        client: &awc::Client,
        uri: &Uri,
        endpoint: &Endpoint,
    ) -> ProbeResult {
        let key = ProbeKey {
            uri: uri.clone(),
            auth_header: endpoint.auth_header.clone(),
            authorization: endpoint.authorization.clone(),
            timeout: endpoint.health_timeout,
        };
        let mut receiver = {
            let mut probes = self.lock();
            match probes.get(&key) {
                Some(Probe::Done { finished, result }) if finished.elapsed() < self.ttl => {
                    return result.clone();
                }
                // A probe whose task died without an answer (its sender is gone) is started anew.
                Some(Probe::Running(receiver)) if receiver.has_changed().is_ok() => {
                    receiver.clone()
                }
                _ => {
                    let ttl = self.ttl;
                    probes.retain(|_, probe| match probe {
                        Probe::Running(_) => true,
                        Probe::Done { finished, .. } => finished.elapsed() < ttl,
                    });
                    let (sender, receiver) = watch::channel(None);
                    probes.insert(key.clone(), Probe::Running(receiver.clone()));
                    actix_web::rt::spawn(run_probe(Arc::clone(self), client.clone(), key, sender));
                    receiver
                }
            }
        };
        let result = match receiver.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(abandoned)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProbeKey, Probe>> {
        self.probes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn abandoned() -> ProbeResult {
    ProbeResult {
        up: false,
        latency: Duration::ZERO,
        error: Some("the probe was abandoned (server shutting down)".into()),
    }
}

async fn run_probe(
    probes: Arc<HealthProbes>,
    client: awc::Client,
    key: ProbeKey,
    sender: watch::Sender<Option<ProbeResult>>,
) {
    let result = request(&client, &key).await;
    probes.lock().insert(
        key,
        Probe::Done {
            finished: Instant::now(),
            result: result.clone(),
        },
    );
    sender.send_replace(Some(result));
}

/// GET the health URL: any 2xx within the timeout is up.
async fn request(client: &awc::Client, key: &ProbeKey) -> ProbeResult {
    let started = Instant::now();
    let mut request = client.get(key.uri.clone()).timeout(key.timeout);
    if let Some(authorization) = &key.authorization {
        request = request.insert_header((key.auth_header.clone(), authorization.clone()));
    }
    let error = match request.send().await {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!(
            "the health URL answered HTTP {}",
            response.status().as_u16()
        )),
        Err(awc::error::SendRequestError::Timeout) => Some(format!(
            "no answer within the health_timeout of {}s",
            key.timeout.as_secs_f64()
        )),
        Err(awc::error::SendRequestError::Connect(error)) => {
            Some(format!("cannot connect: {error}"))
        }
        Err(error) => Some(format!("the probe failed: {error}")),
    };
    ProbeResult {
        up: error.is_none(),
        latency: started.elapsed(),
        error,
    }
}

/// The answer of GET /health/{model}.
#[derive(Debug, Serialize)]
pub struct ModelHealth {
    pub status: ModelStatus,
    pub model: String,
    pub endpoints: Vec<EndpointHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    /// Every probed endpoint is up (or none is probed).
    Ok,
    /// Some probed endpoints are up, some down.
    Degraded,
    /// Every probed endpoint is down.
    Error,
}

#[derive(Debug, Serialize)]
pub struct EndpointHealth {
    pub provider: String,
    pub path: String,
    /// The URL probed, or the endpoint's base URL when it is not probed.
    pub url: String,
    pub status: EndpointStatus,
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
    /// The pool's circuit breaker keeps this endpoint out of traffic after consecutive failures.
    pub ejected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    Up,
    Down,
    Unchecked,
}

/// Probes every endpoint of the model concurrently (one request per distinct URL) and sums up.
pub async fn check_model(
    probes: &Arc<HealthProbes>,
    clients: &UpstreamClients,
    routes: &ModelRoutes,
) -> ModelHealth {
    let endpoints: Vec<&Arc<Endpoint>> = routes
        .routes
        .iter()
        .flat_map(|route| route.pool.members())
        .collect();
    let checks = endpoints.iter().map(|endpoint| async move {
        let Some(uri) = &endpoint.health_uri else {
            return EndpointHealth {
                provider: endpoint.provider.to_string(),
                path: endpoint.path.to_string(),
                url: endpoint.base_url.to_string(),
                status: EndpointStatus::Unchecked,
                latency_ms: None,
                error: None,
                ejected: endpoint.is_ejected(),
            };
        };
        let result = probes
            .probe(&clients.for_endpoint(endpoint), uri, endpoint)
            .await;
        EndpointHealth {
            provider: endpoint.provider.to_string(),
            path: endpoint.path.to_string(),
            url: uri.to_string(),
            status: if result.up {
                EndpointStatus::Up
            } else {
                EndpointStatus::Down
            },
            latency_ms: Some(u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX)),
            error: result.error,
            ejected: endpoint.is_ejected(),
        }
    });
    let endpoints = futures_util::future::join_all(checks).await;
    ModelHealth {
        status: model_status(endpoints.iter().map(|e| e.status)),
        model: routes.name.to_string(),
        endpoints,
    }
}

/// Unchecked endpoints don't count: all probed up (or none probed) is ok, none up is an error.
pub fn model_status(statuses: impl Iterator<Item = EndpointStatus>) -> ModelStatus {
    let (mut up, mut down) = (0, 0);
    for status in statuses {
        match status {
            EndpointStatus::Up => up += 1,
            EndpointStatus::Down => down += 1,
            EndpointStatus::Unchecked => {}
        }
    }
    match (up, down) {
        (_, 0) => ModelStatus::Ok,
        (0, _) => ModelStatus::Error,
        _ => ModelStatus::Degraded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndpointStatus::{Down, Unchecked, Up};

    fn check(statuses: &[EndpointStatus], expected: ModelStatus) {
        assert_eq!(
            model_status(statuses.iter().copied()),
            expected,
            "{statuses:?}"
        );
    }

    #[test]
    fn unchecked_endpoints_do_not_count_toward_the_model_status() {
        check(&[Up, Up], ModelStatus::Ok);
        check(&[Up, Unchecked], ModelStatus::Ok);
        check(&[Unchecked], ModelStatus::Ok);
        check(&[Up, Down], ModelStatus::Degraded);
        check(&[Up, Down, Unchecked], ModelStatus::Degraded);
        check(&[Down, Down], ModelStatus::Error);
        check(&[Down, Unchecked], ModelStatus::Error);
    }
}
