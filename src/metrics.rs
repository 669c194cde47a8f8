//! Prometheus registry and recorders: one registry per application, rendered as OpenMetrics text
//! on `GET /metrics`.
//!
//! Recording happens once per request, when its access log line is written, and touches only
//! atomics (plus the read lock of a family's map, shared once a label set exists): histograms are
//! [`AtomicHistogram`]s, because the crate's `Histogram` takes a mutex on every observation. Label values are `Arc<str>` shared with the routing table or `&'static str`, so
//! recording allocates nothing. A request that names no known model is labelled
//! `model="unknown"`, so clients cannot grow the series count. Everything that describes state
//! rather than events (endpoint up, config generation, process figures) is read at scrape time.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::collector::Collector;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::proxy::usage::Usage;
use crate::routing::endpoint::Endpoint;
use crate::routing::table::RoutingTable;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The model label of requests that named no model llmux serves.
pub const UNKNOWN_MODEL: &str = "unknown";
/// The provider label of requests that reached no endpoint.
pub const NO_PROVIDER: &str = "none";

/// Request latency buckets, 5 ms to 5 minutes: LLM calls range from cached embeddings to long
/// reasoning answers.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0,
    300.0,
];
const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 2000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub path: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub path: &'static str,
    pub stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub r#type: &'static str,
    pub estimated: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EndpointLabels {
    pub model: Arc<str>,
    pub provider: Arc<str>,
    pub endpoint: Arc<str>,
}

type HistogramFamily<L> = Family<L, AtomicHistogram, fn() -> AtomicHistogram>;

/// A histogram with fixed buckets recorded with atomics only. Each bucket counts its own
/// observations (rendered cumulatively); the sum is an `f64` kept in an `AtomicU64`'s bits. A
/// scrape racing an observation may see the count one ahead of a bucket, as with any lock-free
/// exporter.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, then +Inf.
    buckets: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            inner: Arc::new(HistogramInner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_bits: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        if let Some(counter) = inner.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let _ = inner
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum_bits.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What one finished request contributes to the metrics.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// `None` when the request reached no endpoint (bad body, unknown model, ...).
    pub endpoint: Option<&'a Endpoint>,
    pub path: &'static str,
    pub status: u16,
    pub stream: bool,
    pub duration: Duration,
    pub first_byte: Option<Duration>,
    pub first_token: Option<Duration>,
    pub usage: Option<Usage>,
    /// The access log's outcome (`ok`, `client_closed`, `upstream_timeout`, `rejected`, ...).
    pub outcome: &'static str,
}

/// Every metric llmux exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<LatencyLabels>,
    first_byte: HistogramFamily<LatencyLabels>,
    tokens: Family<TokenLabels, Counter>,
    tokens_per_second: HistogramFamily<ModelLabels>,
    in_flight: Gauge,
    upstream_attempts: Family<OutcomeLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    config_errors: Gauge,
    image_cache_bytes: Gauge,
    endpoint_state: Arc<EndpointState>,
    /// Per client key (access control), in the same registry.
    pub access: crate::access::metrics::AccessMetrics,
    unknown_model: Arc<str>,
    no_provider: Arc<str>,
}

/// Upstream attempt outcomes, all exported from the start so rates exist before the first error.
const ATTEMPT_OUTCOMES: [&str; 3] = ["response", "timeout", "unreachable"];
const ERROR_KINDS: [&str; 5] = [
    "timeout",
    "unreachable",
    "body",
    "idle_timeout",
    "status_5xx",
];

impl Metrics {
    /// Builds the registry. `table` is read at scrape time for the config generation and the
    /// endpoints whose up state is exported.
    pub fn new(table: Arc<RoutingTable>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "llmux_requests",
            "Requests answered, by exposed model, provider, path and HTTP status",
            requests.clone(),
        );
        let duration = seconds_histograms();
        registry.register(
            "llmux_request_duration_seconds",
            "Time from the request's arrival to the last byte of its answer",
            duration.clone(),
        );
        let first_byte = seconds_histograms();
        registry.register(
            "llmux_time_to_first_byte_seconds",
            "Time from the request's arrival to the first byte of the upstream's body (for streams: the first chunk)",
            first_byte.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "llmux_tokens",
            "Tokens by type (prompt, completion, cached, reasoning), as the backend reported them or estimated=\"true\" when counted by llmux",
            tokens.clone(),
        );
        let tokens_per_second: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(|| AtomicHistogram::new(TOKENS_PER_SECOND_BUCKETS));
        registry.register(
            "llmux_output_tokens_per_second",
            "Decoding throughput of completed streams: completion tokens over the time from the first token to the end",
            tokens_per_second.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "llmux_requests_in_flight",
            "Requests being served",
            in_flight.clone(),
        );
        let upstream_attempts = Family::<OutcomeLabels, Counter>::default();
        for outcome in ATTEMPT_OUTCOMES {
            drop(upstream_attempts.get_or_create(&OutcomeLabels { outcome }));
        }
        registry.register(
            "llmux_upstream_attempts",
            "Upstream calls by outcome: response (a status came back), timeout, unreachable",
            upstream_attempts.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        for kind in ERROR_KINDS {
            drop(upstream_errors.get_or_create(&KindLabels { kind }));
        }
        registry.register(
            "llmux_upstream_errors",
            "Upstream failures by kind: timeout, unreachable, body (failed mid-body), idle_timeout (silent mid-body), status_5xx",
            upstream_errors.clone(),
        );
        let config_errors = Gauge::default();
        registry.register(
            "llmux_config_errors",
            "Errors found in the config files by their last load (a file with errors keeps its last good version)",
            config_errors.clone(),
        );
        let image_cache_bytes = Gauge::default();
        registry.register(
            "llmux_image_cache_bytes",
            "Bytes held by the image-data cache",
            image_cache_bytes.clone(),
        );
        let endpoint_state = Arc::new(EndpointState {
            table,
            down: DashMap::new(),
        });
        registry.register_collector(Box::new(Arc::clone(&endpoint_state)));
        registry.register_collector(Box::new(ProcessCollector));
        let access = crate::access::metrics::AccessMetrics::register(&mut registry);
        Self {
            access,
            registry,
            requests,
            duration,
            first_byte,
            tokens,
            tokens_per_second,
            in_flight,
            upstream_attempts,
            upstream_errors,
            config_errors,
            image_cache_bytes,
            endpoint_state,
            unknown_model: Arc::from(UNKNOWN_MODEL),
            no_provider: Arc::from(NO_PROVIDER),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    pub fn request_ended(&self) {
        self.in_flight.dec();
    }

    /// Records one finished request.
    pub fn record(&self, request: &RequestRecord<'_>) {
        let (model, provider) = match request.endpoint {
            Some(endpoint) => (
                Arc::clone(&endpoint.exposed_model),
                Arc::clone(&endpoint.provider),
            ),
            None => (
                Arc::clone(&self.unknown_model),
                Arc::clone(&self.no_provider),
            ),
        };
        let latency = LatencyLabels {
            model: Arc::clone(&model),
            provider: Arc::clone(&provider),
            path: request.path,
            stream: request.stream,
        };
        self.duration
            .get_or_create(&latency)
            .observe(request.duration.as_secs_f64());
        if let Some(first_byte) = request.first_byte {
            self.first_byte
                .get_or_create(&latency)
                .observe(first_byte.as_secs_f64());
        }
        if request.endpoint.is_some() {
            self.record_attempt(request.outcome, request.status);
        }
        if let Some(usage) = request.usage {
            self.record_usage(&model, &provider, usage, request);
        }
        self.requests
            .get_or_create(&RequestLabels {
                model,
                provider,
                path: request.path,
                status: request.status,
            })
            .inc();
    }

    /// Counts one upstream attempt by how it ended: `outcome` as the access log names it
    /// (`upstream_timeout`, `upstream_unreachable`, ...) and the status that came back (0: none).
    /// A request's last attempt is counted with the request; the retry loop counts the others.
    pub fn record_attempt(&self, outcome: &str, status: u16) {
        let (outcome, error) = match outcome {
            "upstream_timeout" => ("timeout", Some("timeout")),
            "upstream_unreachable" => ("unreachable", Some("unreachable")),
            "upstream_body_error" => ("response", Some("body")),
            "upstream_idle_timeout" => ("response", Some("idle_timeout")),
            _ if status >= 500 => ("response", Some("status_5xx")),
            _ => ("response", None),
        };
        self.upstream_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if let Some(kind) = error {
            self.upstream_errors
                .get_or_create(&KindLabels { kind })
                .inc();
        }
    }

    fn record_usage(
        &self,
        model: &Arc<str>,
        provider: &Arc<str>,
        usage: Usage,
        request: &RequestRecord<'_>,
    ) {
        for (kind, count) in [
            ("prompt", usage.prompt),
            ("completion", usage.completion),
            ("cached", usage.cached),
            ("reasoning", usage.reasoning),
        ] {
            // Prompt and completion series exist from a model's first request; cached and
            // reasoning only once a backend reports them.
            if count == 0 && matches!(kind, "cached" | "reasoning") {
                continue;
            }
            self.tokens
                .get_or_create(&TokenLabels {
                    model: Arc::clone(model),
                    provider: Arc::clone(provider),
                    r#type: kind,
                    estimated: usage.estimated,
                })
                .inc_by(count);
        }
        let decoding = request
            .first_token
            .map(|first| request.duration.saturating_sub(first));
        if let Some(decoding) = decoding {
            if request.stream
                && request.outcome == "ok"
                && usage.completion > 1
                && !decoding.is_zero()
            {
                // The first token arrived at `first_token`; the rest took `decoding`.
                let rate = (usage.completion - 1) as f64 / decoding.as_secs_f64();
                self.tokens_per_second
                    .get_or_create(&ModelLabels {
                        model: Arc::clone(model),
                        provider: Arc::clone(provider),
                    })
                    .observe(rate);
            }
        }
    }

    /// Marks an endpoint up or down (health probes, passive ejection). Endpoints start up.
    pub fn set_endpoint_up(&self, endpoint: &Endpoint, up: bool) {
        let key = EndpointLabels::of(endpoint);
        match up {
            true => {
                self.endpoint_state.down.remove(&key);
            }
            false => {
                self.endpoint_state.down.insert(key, ());
            }
        }
    }

    /// The number of errors the last config load found.
    pub fn set_config_errors(&self, errors: usize) {
        self.config_errors
            .set(i64::try_from(errors).unwrap_or(i64::MAX));
    }

    pub fn set_image_cache_bytes(&self, bytes: u64) {
        self.image_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

fn seconds_histograms<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(|| AtomicHistogram::new(SECONDS_BUCKETS))
}

impl EndpointLabels {
    fn of(endpoint: &Endpoint) -> Self {
        Self {
            model: Arc::clone(&endpoint.exposed_model),
            provider: Arc::clone(&endpoint.provider),
            endpoint: Arc::from(endpoint.upstream_uri.to_string()),
        }
    }
}

/// Endpoint up/down and the config generation, read from the table at scrape time so endpoints
/// removed by a reload disappear with it.
#[derive(Debug)]
struct EndpointState {
    table: Arc<RoutingTable>,
    down: DashMap<EndpointLabels, ()>,
}

impl Collector for EndpointState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let generation =
            ConstGauge::new(i64::try_from(self.table.generation()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "llmux_config_generation",
            "Version of the routing table: bumped by every change a config load publishes",
            None,
            generation.metric_type(),
        )?;
        generation.encode(metric)?;

        let endpoints: BTreeMap<EndpointLabels, i64> = self
            .table
            .endpoints()
            .iter()
            .map(|endpoint| {
                let labels = EndpointLabels::of(endpoint);
                let up = i64::from(!self.down.contains_key(&labels) && !endpoint.is_ejected());
                (labels, up)
            })
            .collect();
        let mut metric = encoder.encode_descriptor(
            "llmux_endpoint_up",
            "1 when the endpoint takes traffic, 0 when health probes or passive ejection took it out",
            None,
            MetricType::Gauge,
        )?;
        for (labels, up) in &endpoints {
            ConstGauge::new(*up).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Resident memory, CPU time and open file descriptors of this process, from /proc at scrape
/// time. Absent on systems without /proc.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of /proc/self/stat's CPU times (USER_HZ, 100 on every Linux ABI).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = resident_memory_bytes() {
            let gauge = ConstGauge::new(i64::try_from(rss).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(seconds) = cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(i64::try_from(fds.count()).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// utime + stime from /proc/self/stat (fields 14 and 15; the command name in field 2 may hold
/// spaces, so fields are counted after its closing parenthesis).
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / CLOCK_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let stat =
            "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let histogram = AtomicHistogram::new(&[0.1, 1.0]);
        for value in [0.05, 0.5, 0.7, 5.0] {
            histogram.observe(value);
        }
        let mut registry = Registry::default();
        registry.register("h_seconds", "help", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "h_seconds_sum 6.25\n",
            "h_seconds_count 4\n",
            "h_seconds_bucket{le=\"0.1\"} 1\n",
            "h_seconds_bucket{le=\"1.0\"} 3\n",
            "h_seconds_bucket{le=\"+Inf\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_fresh_registry_renders_openmetrics_text() {
        let metrics = Metrics::new(Arc::new(RoutingTable::new()));
        let text = metrics.render().unwrap();
        assert!(
            text.contains("# TYPE llmux_requests_in_flight gauge"),
            "{text}"
        );
        assert!(text.contains("llmux_config_generation 0"), "{text}");
        assert!(
            text.contains("llmux_upstream_attempts_total{outcome=\"timeout\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
