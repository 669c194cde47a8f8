//! GET / and /status: the status page (one HTML file in the binary, no external assets), and
//! GET /status.json, which the page polls (both behind the admin gate when access control is on): version, uptime, config files and their problems, every
//! model with its endpoints, and per-model request counters and latency buckets from llmux's own
//! metrics (the page turns two polls into recent rates and percentiles).
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::access::admin::{AdminGate, AdminRefusal};
use crate::api::admin;
use crate::config::load::Severity;
use crate::config::watch::FileStatus;
use crate::errors::ApiError;
use crate::state::AppState;

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("status.html");

#[derive(Serialize)]
struct StatusReport {
    version: &'static str,
    /// Unix milliseconds.
    now_ms: u64,
    started_ms: u64,
    uptime_seconds: u64,
    config: ConfigReport,
    models: Vec<ModelReport>,
}

#[derive(Serialize)]
struct ConfigReport {
    config_dir: String,
    generation: u64,
    /// How many times the dir was read (start-up included), and when last.
    reloads: u64,
    checked_ms: u64,
    /// When a reload last changed a route.
    loaded_ms: u64,
    files: Vec<FileReport>,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    /// `ok`, `error` (never loaded) or `serving_last_good`.
    status: &'static str,
    serving_since_ms: Option<u64>,
    failing_since_ms: Option<u64>,
    problems: Vec<ProblemReport>,
}

#[derive(Serialize)]
struct ProblemReport {
    severity: Severity,
    message: String,
    json_path: String,
    line: Option<usize>,
    column: Option<usize>,
}

#[derive(Serialize)]
struct ModelReport {
    name: String,
    routes: Vec<RouteReport>,
    traffic: Traffic,
}

#[derive(Serialize)]
struct RouteReport {
    path: String,
    endpoints: Vec<EndpointReport>,
}

#[derive(Serialize)]
struct EndpointReport {
    provider: String,
    target_model_name: String,
    upstream: String,
    file: String,
    weight: f64,
    ejected: bool,
    consecutive_failures: u32,
}

/// Cumulative counters of one model since start-up.
#[derive(Serialize, Default, Debug, PartialEq)]
struct Traffic {
    requests: u64,
    /// Answers with a status of 400 or more (llmux's refusals and upstream errors alike).
    errors: u64,
    /// `[upper bound in seconds, cumulative count]`, summed over paths, providers and streams;
    /// the last bound is `+Inf` (sent as `null`).
    duration_buckets: Vec<(Option<f64>, u64)>,
}

/// With access control on, the page and its report show the router's topology only to an admin.
/// "On" means: client keys are required (a key file loaded, or `--access-control on`), or an
/// admin credential is configured (whoever set one said this router has admin-only facts;
/// `/admin/config` shows the same ones behind it). Without either the page stays open. The page's
/// per-model health (`/health/{model}`, which lists endpoints) follows the same rule.
pub async fn admitted(
    request: &HttpRequest,
    state: &AppState,
    gate: &AdminGate,
    client: &awc::Client,
) -> Result<(), ApiError> {
    if !state.admitter.access().enabled() && !gate.is_configured() {
        return Ok(());
    }
    match gate.check(request.headers(), client).await {
        Ok(_) => Ok(()),
        // Nobody can be an admin here (keys but no credential): the same 401, no hint why.
        Err(AdminRefusal::NotConfigured) => Err(admin::refusal_error(AdminRefusal::Unauthorized)),
        Err(refusal) => Err(admin::refusal_error(refusal)),
    }
}

/// `/` and `/status`. A browser (which cannot send a header on navigation) refused by the gate
/// gets the same page with status 401: the page holds no data and shows its sign-in form; any
/// other client gets the OpenAI-shaped 401.
pub async fn page(
    request: HttpRequest,
    state: web::Data<AppState>,
    gate: web::Data<AdminGate>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let status = match admitted(&request, &state, &gate, &client).await {
        Ok(()) => StatusCode::OK,
        Err(_) if wants_html(&request) => StatusCode::UNAUTHORIZED,
        Err(error) => return error.error_response(),
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE)
}

fn wants_html(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

pub async fn report(
    request: HttpRequest,
    state: web::Data<AppState>,
    gate: web::Data<AdminGate>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, ApiError> {
    admitted(&request, &state, &gate, &client).await?;
    let config = state.live.status();
    let mut traffic = state
        .metrics
        .render()
        .map(|text| traffic_by_model(&text))
        .unwrap_or_default();
    let models = state
        .table
        .models()
        .iter()
        .map(|model| ModelReport {
            name: model.name.to_string(),
            routes: model
                .routes
                .iter()
                .map(|route| RouteReport {
                    path: format!("/{}", route.path),
                    endpoints: route
                        .pool
                        .members()
                        .iter()
                        .map(|endpoint| EndpointReport {
                            provider: endpoint.provider.to_string(),
                            target_model_name: endpoint.target_model_name.to_string(),
                            upstream: endpoint.upstream_uri.to_string(),
                            file: file_name(&endpoint.file),
                            weight: endpoint.weight,
                            ejected: endpoint.is_ejected(),
                            consecutive_failures: endpoint.breaker.consecutive_failures(),
                        })
                        .collect(),
                })
                .collect(),
            traffic: traffic.remove(&*model.name).unwrap_or_default(),
        })
        .collect();
    let now = SystemTime::now();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            now_ms: unix_ms(now),
            started_ms: unix_ms(state.started_at),
            uptime_seconds: now
                .duration_since(state.started_at)
                .unwrap_or_default()
                .as_secs(),
            config: ConfigReport {
                config_dir: config.config_dir.display().to_string(),
                generation: config.generation,
                reloads: config.reloads,
                checked_ms: unix_ms(config.checked_at),
                loaded_ms: unix_ms(config.loaded_at),
                files: config.files.iter().map(file_report).collect(),
            },
            models,
        }))
}

fn file_report(file: &FileStatus) -> FileReport {
    FileReport {
        file: file_name(&file.file),
        status: match (file.failing_since, file.serving_since) {
            (None, _) => "ok",
            (Some(_), None) => "error",
            (Some(_), Some(_)) => "serving_last_good",
        },
        serving_since_ms: file.serving_since.map(unix_ms),
        failing_since_ms: file.failing_since.map(unix_ms),
        problems: file
            .problems
            .iter()
            .map(|problem| ProblemReport {
                severity: problem.severity,
                message: problem.message.clone(),
                json_path: problem.json_path.clone(),
                line: problem.position.map(|p| p.line),
                column: problem.position.map(|p| p.column),
            })
            .collect(),
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Per-model counters read back from the OpenMetrics text of llmux's registry: the registry's
/// families cannot be iterated, and the text is what Prometheus sees, so the page and a
/// dashboard agree.
fn traffic_by_model(text: &str) -> BTreeMap<String, Traffic> {
    let mut traffic: BTreeMap<String, Traffic> = BTreeMap::new();
    // Summed by bound, in bound order (`None`, +Inf, last).
    let mut buckets: BTreeMap<String, BTreeMap<BoundKey, u64>> = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let count = value as u64;
        if let Some(labels) = series.strip_prefix("llmux_requests_total{") {
            let Some(model) = label(labels, "model") else {
                continue;
            };
            let entry = traffic.entry(model.to_owned()).or_default();
            entry.requests += count;
            if label(labels, "status")
                .and_then(|status| status.parse::<u16>().ok())
                .is_some_and(|status| status >= 400)
            {
                entry.errors += count;
            }
        } else if let Some(labels) = series.strip_prefix("llmux_request_duration_seconds_bucket{") {
            let (Some(model), Some(bound)) = (label(labels, "model"), label(labels, "le")) else {
                continue;
            };
            let bound = BoundKey(bound.parse::<f64>().ok().filter(|b| b.is_finite()));
            *buckets
                .entry(model.to_owned())
                .or_default()
                .entry(bound)
                .or_default() += count;
        }
    }
    for (model, bounds) in buckets {
        traffic.entry(model).or_default().duration_buckets = bounds
            .into_iter()
            .map(|(bound, count)| (bound.0, count))
            .collect();
    }
    traffic
}

/// A bucket bound, ordered with `+Inf` (`None`) last.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BoundKey(Option<f64>);

impl Eq for BoundKey {}

impl PartialOrd for BoundKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BoundKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
}

/// The value of `name="..."` in a label list (llmux's label values never hold a quote: model
/// names come from config keys and unknown ones are `unknown`).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))?;
    start.split('"').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_buckets_are_summed_per_model() {
        let text = r#"# TYPE llmux_requests counter
llmux_requests_total{model="a",provider="p",path="v1/x",status="200"} 3
llmux_requests_total{model="a",provider="p",path="v1/x",status="502"} 1
llmux_requests_total{model="b",provider="p",path="v1/x",status="200"} 2
llmux_request_duration_seconds_bucket{le="0.1",model="a",provider="p",path="v1/x",stream="false"} 2
llmux_request_duration_seconds_bucket{le="+Inf",model="a",provider="p",path="v1/x",stream="false"} 4
llmux_request_duration_seconds_bucket{le="0.1",model="a",provider="p",path="v1/x",stream="true"} 1
"#;
        let traffic = traffic_by_model(text);
        assert_eq!(
            traffic["a"],
            Traffic {
                requests: 4,
                errors: 1,
                duration_buckets: vec![(Some(0.1), 3), (None, 4)],
            }
        );
        assert_eq!(traffic["b"].requests, 2);
    }
}
