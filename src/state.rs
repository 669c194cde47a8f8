//! Shared state, built once and handed to every worker as `web::Data<AppState>`.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::watch::LiveConfig;
use crate::health::HealthProbes;
use crate::images::ImageCache;
use crate::metrics::Metrics;
use crate::pipeline::admit::Admitter;
use crate::pipeline::attempt::RetryPolicy;
use crate::routing::responses::ResponseOwners;
use crate::routing::table::RoutingTable;

pub struct AppState {
    pub table: Arc<RoutingTable>,
    /// Public URL of this instance, without trailing slash.
    pub base_url: String,
    pub max_body_bytes: usize,
    /// The config files as last loaded, for `GET /admin/config`.
    pub live: Arc<LiveConfig>,
    /// Which endpoint created each Responses API response, for the calls that name only its id.
    pub responses: Arc<ResponseOwners>,
    /// Per-model health probes and their short-lived cache.
    pub health: Arc<HealthProbes>,
    /// Set by the first shutdown signal: /ready answers 503 from then on.
    pub shutting_down: AtomicBool,
    /// Retry waits and circuit-breaker thresholds for pools.
    pub retry: RetryPolicy,
    /// Largest multipart upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Images served under `{base_url}/v1/images/data/{model}/{id}`.
    pub images: Arc<ImageCache>,
    /// The admit stage's rules (client keys, allowed models, quotas).
    pub admitter: Admitter,
    /// When this application was built, for the status page's uptime.
    pub started_at: std::time::SystemTime,
    /// This application's Prometheus registry (one per app: tests run many in one process).
    pub metrics: Arc<Metrics>,
    /// Where upload parts before `model` are spooled (`--spool-dir`, default the temp dir).
    pub spool_dir: PathBuf,
}
