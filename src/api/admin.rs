//! GET /admin/config: the config as served, file by file. Read-only and free of secrets: keys show
//! as their variable's name and whether it is set, never their value.
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};
use serde::Serialize;

use crate::access::admin::{AdminGate, AdminRefusal};
use crate::config::load::{Problem, Severity};
use crate::config::watch::FileStatus;
use crate::errors::ApiError;
use crate::routing::endpoint::Endpoint;
use crate::state::AppState;

/// The middleware in front of `/admin/*` (`middleware::from_fn`): the admin gate
/// (`access::admin`) or an OpenAI-shaped refusal: 503 saying how to set a credential when none is
/// configured, 401 otherwise.
pub async fn gate<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let gate = request.app_data::<web::Data<AdminGate>>().cloned();
    let client = request.app_data::<web::Data<awc::Client>>().cloned();
    let verdict = match (gate, client) {
        (Some(gate), Some(client)) => gate.check(request.headers(), &client).await,
        _ => Err(AdminRefusal::NotConfigured),
    };
    match verdict {
        Ok(_) => Ok(next.call(request).await?.map_into_left_body()),
        Err(refusal) => Ok(request
            .into_response(refusal_error(refusal).error_response())
            .map_into_right_body()),
    }
}

/// What `/admin/*` and the status page answer when the gate refuses: a wrong token and a valid
/// OIDC token without an admin role look the same.
pub fn refusal_error(refusal: AdminRefusal) -> ApiError {
    match refusal {
        AdminRefusal::NotConfigured => ApiError::AdminNotConfigured,
        AdminRefusal::Unauthorized | AdminRefusal::NotAnAdmin => ApiError::InvalidApiKey {
            reason: "This endpoint needs the admin credential as `Authorization: Bearer TOKEN`.",
        },
    }
}

#[derive(Serialize)]
struct ConfigReport {
    config_dir: String,
    /// Bumped by every reload that changed a route.
    generation: u64,
    /// When the generation last changed.
    loaded_at: String,
    /// When the dir was last read.
    checked_at: String,
    reloads: u64,
    files: Vec<FileReport>,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    /// `ok`, `error` (never loaded: no routes) or `serving_last_good` (its current text fails;
    /// the version loaded at `serving_since` still serves).
    status: &'static str,
    serving_since: Option<String>,
    failing_since: Option<String>,
    errors: Vec<ProblemReport>,
    warnings: Vec<ProblemReport>,
    routes: Vec<RouteReport>,
}

#[derive(Serialize)]
struct ProblemReport {
    message: String,
    json_path: String,
    line: Option<usize>,
    column: Option<usize>,
}

#[derive(Serialize)]
struct RouteReport {
    model: String,
    path: String,
    provider: String,
    target_model_name: String,
    upstream: String,
    request_timeout: f64,
    health_timeout: f64,
    key_variable: Option<String>,
    /// `set` or `unset` when the provider names a key variable.
    key: Option<&'static str>,
}

pub async fn config(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Reporting a large table takes a while: on the blocking pool, not a request worker.
    let body = web::block(move || serde_json::to_vec(&report(&state)))
        .await
        .map_err(|error| ApiError::Internal(format!("reporting the config: {error}")))?
        .map_err(|error| ApiError::Internal(format!("reporting the config: {error}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

fn report(state: &AppState) -> ConfigReport {
    let status = state.live.status();
    let published = state.table.published_files();
    let files = status
        .files
        .iter()
        .map(|file| {
            let endpoints = published.get(&file.file).map_or(&[][..], |e| &e[..]);
            file_report(file, endpoints)
        })
        .collect();
    ConfigReport {
        config_dir: status.config_dir.display().to_string(),
        generation: status.generation,
        loaded_at: rfc3339(status.loaded_at),
        checked_at: rfc3339(status.checked_at),
        reloads: status.reloads,
        files,
    }
}

fn file_report(file: &FileStatus, endpoints: &[std::sync::Arc<Endpoint>]) -> FileReport {
    let status = match (file.failing_since, file.serving_since) {
        (None, _) => "ok",
        (Some(_), None) => "error",
        (Some(_), Some(_)) => "serving_last_good",
    };
    let problems = |severity: Severity| {
        file.problems
            .iter()
            .filter(|p| p.severity == severity)
            .map(problem_report)
            .collect()
    };
    FileReport {
        file: file.file.file_name().map_or_else(
            || file.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        status,
        serving_since: file.serving_since.map(rfc3339),
        failing_since: file.failing_since.map(rfc3339),
        errors: problems(Severity::Error),
        warnings: problems(Severity::Warning),
        routes: endpoints
            .iter()
            .filter(|e| *e.file == *file.file)
            .map(|e| route_report(e))
            .collect(),
    }
}

fn problem_report(problem: &Problem) -> ProblemReport {
    ProblemReport {
        message: problem.message.clone(),
        json_path: problem.json_path.clone(),
        line: problem.position.map(|p| p.line),
        column: problem.position.map(|p| p.column),
    }
}

fn route_report(endpoint: &Endpoint) -> RouteReport {
    RouteReport {
        model: endpoint.exposed_model.to_string(),
        path: format!("/{}", endpoint.path),
        provider: endpoint.provider.to_string(),
        target_model_name: endpoint.target_model_name.to_string(),
        upstream: endpoint.upstream_uri.to_string(),
        request_timeout: endpoint.request_timeout.as_secs_f64(),
        health_timeout: endpoint.health_timeout.as_secs_f64(),
        key_variable: endpoint.key_variable.as_deref().map(str::to_owned),
        key: endpoint.key_variable.as_ref().map(|_| {
            if endpoint.api_key.is_some() {
                "set"
            } else {
                "unset"
            }
        }),
    }
}

/// `2026-11-22T21:30:05.123Z`, without a date-time dependency.
fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(unix_millis: u64, expected: &str) {
        let time = UNIX_EPOCH + Duration::from_millis(unix_millis);
        assert_eq!(rfc3339(time), expected);
    }

    #[test]
    fn times_render_as_rfc3339_utc() {
        check(0, "1970-01-01T00:00:00.000Z");
        check(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check(1_795_383_005_123, "2026-11-22T21:30:05.123Z");
        check(4_107_542_399_999, "2100-02-28T23:59:59.999Z");
    }
}
