//! Shared state, built once and handed to every worker as `web::Data<AppState>`.
use std::path::PathBuf;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::routing::table::RoutingTable;
use crate::startup::EnvSource;

pub struct AppState {
    pub table: Arc<RoutingTable>,
    pub config_dir: PathBuf,
    /// Public URL of this instance, without trailing slash.
    pub base_url: String,
    pub max_body_bytes: usize,
    /// Where provider keys are read from at each load.
    pub env: EnvSource,
    /// This application's Prometheus registry (one per app: tests run many in one process).
    pub metrics: Arc<Metrics>,
}
