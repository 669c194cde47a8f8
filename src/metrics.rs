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
use std::sync::{Arc, OnceLock};
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
/// Overhead buckets, 50 µs to 1 s: what llmux adds is usually well under a millisecond.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
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
pub struct OperationLabels {
    pub path: &'static str,
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
    /// Time spent waiting on upstreams; `None` when no upstream call was made.
    pub upstream_wait: Option<Duration>,
}

/// Every metric llmux exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<LatencyLabels>,
    first_byte: HistogramFamily<LatencyLabels>,
    overhead: HistogramFamily<OperationLabels>,
    tokens: Family<TokenLabels, Counter>,
    tokens_per_second: HistogramFamily<ModelLabels>,
    in_flight: Gauge,
    config_errors: Gauge,
    image_cache_bytes: Gauge,
    endpoint_state: Arc<EndpointState>,
    /// Per client key (access control), in the same registry.
    pub access: crate::access::metrics::AccessMetrics,
    unknown_model: Arc<str>,
    no_provider: Arc<str>,
    /// Realtime WebSocket sessions (`realtime::metrics`).
    pub realtime: crate::realtime::metrics::RealtimeMetrics,
    /// The series of each label set requests were recorded under, resolved once: looking up six
    /// families per request (SipHash over every label, a read lock each) was about 4k
    /// instructions per request (issue 16). Families are never cleared, so a handle stays valid.
    series: DashMap<SeriesKey, Arc<RequestSeries>, foldhash::fast::RandomState>,
    /// This instance, in the per-thread [`LAST_SERIES`].
    id: u64,
    /// `upstream_attempts` by `ATTEMPT_OUTCOMES`, `upstream_errors` by `ERROR_KINDS`.
    attempt_counters: [Counter; ATTEMPT_OUTCOMES.len()],
    error_counters: [Counter; ERROR_KINDS.len()],
}

/// The labels of one finished request that pick its series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    model: Arc<str>,
    provider: Arc<str>,
    path: &'static str,
    stream: bool,
    status: u16,
}

impl SeriesKey {
    /// The same labels from the same strings (the routing table's): equal, compared without
    /// reading them. Equal labels from other strings (after a reload) are not `is`.
    fn is(&self, other: &SeriesKey) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
            && Arc::ptr_eq(&self.provider, &other.provider)
            && std::ptr::eq(self.path, other.path)
            && self.stream == other.stream
            && self.status == other.status
    }
}

/// The series a thread recorded into last, and for which `Metrics`: a worker's requests mostly
/// go to the series of the one before, and comparing pointers is cheaper than hashing the
/// labels and looking them up in `series` (the lookup was 650 of the 720 instructions of
/// `Metrics::record`, issue 16). It keeps one label set's strings and series alive per thread.
struct LastSeries {
    metrics: u64,
    key: SeriesKey,
    series: Arc<RequestSeries>,
}

thread_local! {
    static LAST_SERIES: std::cell::RefCell<Option<LastSeries>> =
        const { std::cell::RefCell::new(None) };
}

/// Tells `Metrics` instances apart in [`LAST_SERIES`] (an address could be reused).
static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

/// The series one label set records into. Those a request may not touch (time to first byte,
/// tokens, throughput) are created on first use, as the families' `get_or_create` did, so the
/// exported series are the same as without this cache.
#[derive(Debug)]
struct RequestSeries {
    requests: Counter,
    duration: AtomicHistogram,
    first_byte: OnceLock<AtomicHistogram>,
    /// The overhead histogram of the series' path (a family of its own, by path only).
    overhead: OnceLock<AtomicHistogram>,
    /// Prompt and completion counters, by `estimated` (false, true).
    tokens: [OnceLock<[Counter; 2]>; 2],
    tokens_per_second: OnceLock<AtomicHistogram>,
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
        let overhead: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(|| AtomicHistogram::new(OVERHEAD_BUCKETS));
        registry.register(
            "llmux_overhead_seconds",
            "Time llmux itself adds to a forwarded request, by operation: its duration minus the time spent waiting on upstreams (attempts, waits between them, the answer's body)",
            overhead.clone(),
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
        let attempt_counters = ATTEMPT_OUTCOMES.map(|outcome| {
            upstream_attempts
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        });
        registry.register(
            "llmux_upstream_attempts",
            "Upstream calls by outcome: response (a status came back), timeout, unreachable",
            upstream_attempts,
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        let error_counters =
            ERROR_KINDS.map(|kind| upstream_errors.get_or_create(&KindLabels { kind }).clone());
        registry.register(
            "llmux_upstream_errors",
            "Upstream failures by kind: timeout, unreachable, body (failed mid-body), idle_timeout (silent mid-body), status_5xx",
            upstream_errors,
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
        let realtime = crate::realtime::metrics::RealtimeMetrics::register(&mut registry);
        let access = crate::access::metrics::AccessMetrics::register(&mut registry);
        registry.register_collector(Box::new(BuildInfo));
        Self {
            realtime,
            access,
            registry,
            requests,
            duration,
            first_byte,
            overhead,
            tokens,
            tokens_per_second,
            in_flight,
            config_errors,
            image_cache_bytes,
            endpoint_state,
            unknown_model: Arc::from(UNKNOWN_MODEL),
            no_provider: Arc::from(NO_PROVIDER),
            series: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            attempt_counters,
            error_counters,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Every metric in `format`.
    pub fn render_as(&self, format: Format) -> Result<String, std::fmt::Error> {
        let text = self.render()?;
        Ok(match format {
            Format::OpenMetrics => text,
            Format::Classic => to_classic(&text),
        })
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
            Some(endpoint) => (&endpoint.exposed_model, &endpoint.provider),
            None => (&self.unknown_model, &self.no_provider),
        };
        let series = self.series_of(SeriesKey {
            model: Arc::clone(model),
            provider: Arc::clone(provider),
            path: request.path,
            stream: request.stream,
            status: request.status,
        });
        series.duration.observe(request.duration.as_secs_f64());
        if let Some(first_byte) = request.first_byte {
            series
                .first_byte
                .get_or_init(|| {
                    self.first_byte
                        .get_or_create(&latency_labels(model, provider, request))
                        .clone()
                })
                .observe(first_byte.as_secs_f64());
        }
        if request.endpoint.is_some() {
            self.record_attempt(request.outcome, request.status);
        }
        if let Some(upstream_wait) = request.upstream_wait {
            series
                .overhead
                .get_or_init(|| {
                    self.overhead
                        .get_or_create(&OperationLabels { path: request.path })
                        .clone()
                })
                .observe(request.duration.saturating_sub(upstream_wait).as_secs_f64());
        }
        if let Some(usage) = request.usage {
            self.record_usage(&series, model, provider, usage, request);
        }
        series.requests.inc();
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
        if let Some(counter) = counter_named(&ATTEMPT_OUTCOMES, &self.attempt_counters, outcome) {
            counter.inc();
        }
        let error = error.and_then(|kind| counter_named(&ERROR_KINDS, &self.error_counters, kind));
        if let Some(counter) = error {
            counter.inc();
        }
    }

    /// The series of `key`, created in the families on its first request.
    fn series_of(&self, key: SeriesKey) -> Arc<RequestSeries> {
        let last = LAST_SERIES.try_with(|last| {
            let last = last.try_borrow().ok()?;
            let last = last.as_ref()?;
            (last.metrics == self.id && last.key.is(&key)).then(|| Arc::clone(&last.series))
        });
        if let Ok(Some(series)) = last {
            return series;
        }
        let series = self.series_in_map(key.clone());
        let _ = LAST_SERIES.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some(LastSeries {
                    metrics: self.id,
                    key,
                    series: Arc::clone(&series),
                });
            }
        });
        series
    }

    fn series_in_map(&self, key: SeriesKey) -> Arc<RequestSeries> {
        if let Some(series) = self.series.get(&key) {
            return Arc::clone(&series);
        }
        let latency = LatencyLabels {
            model: Arc::clone(&key.model),
            provider: Arc::clone(&key.provider),
            path: key.path,
            stream: key.stream,
        };
        let requests = RequestLabels {
            model: Arc::clone(&key.model),
            provider: Arc::clone(&key.provider),
            path: key.path,
            status: key.status,
        };
        let series = RequestSeries {
            requests: self.requests.get_or_create(&requests).clone(),
            duration: self.duration.get_or_create(&latency).clone(),
            first_byte: OnceLock::new(),
            overhead: OnceLock::new(),
            tokens: [OnceLock::new(), OnceLock::new()],
            tokens_per_second: OnceLock::new(),
        };
        Arc::clone(&self.series.entry(key).or_insert_with(|| Arc::new(series)))
    }

    fn record_usage(
        &self,
        series: &RequestSeries,
        model: &Arc<str>,
        provider: &Arc<str>,
        usage: Usage,
        request: &RequestRecord<'_>,
    ) {
        let token_counter = |kind: &'static str| {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: Arc::clone(model),
                    provider: Arc::clone(provider),
                    r#type: kind,
                    estimated: usage.estimated,
                })
                .clone()
        };
        // Prompt and completion series exist from a model's first request; cached and
        // reasoning only once a backend reports them.
        let [prompt, completion] = series.tokens[usize::from(usage.estimated)]
            .get_or_init(|| [token_counter("prompt"), token_counter("completion")]);
        prompt.inc_by(usage.prompt);
        completion.inc_by(usage.completion);
        for (kind, count) in [("cached", usage.cached), ("reasoning", usage.reasoning)] {
            if count != 0 {
                token_counter(kind).inc_by(count);
            }
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
                series
                    .tokens_per_second
                    .get_or_init(|| {
                        self.tokens_per_second
                            .get_or_create(&ModelLabels {
                                model: Arc::clone(model),
                                provider: Arc::clone(provider),
                            })
                            .clone()
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

    /// Adds metrics read at scrape time from elsewhere (the Redis ones, with `--redis-url`).
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    pub fn set_image_cache_bytes(&self, bytes: u64) {
        self.image_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The counter of `name` in `counters`, which follow `names`.
fn counter_named<'a>(names: &[&str], counters: &'a [Counter], name: &str) -> Option<&'a Counter> {
    let index = names.iter().position(|candidate| *candidate == name)?;
    counters.get(index)
}

fn latency_labels(
    model: &Arc<str>,
    provider: &Arc<str>,
    request: &RequestRecord<'_>,
) -> LatencyLabels {
    LatencyLabels {
        model: Arc::clone(model),
        provider: Arc::clone(provider),
        path: request.path,
        stream: request.stream,
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

/// Process figures under the names Prometheus' client libraries use, read from /proc through
/// the `procfs` crate at scrape time. Absent on systems without /proc.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(process) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, value: i64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)
        };
        let saturating = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        if let Ok(stat) = process.stat() {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                saturating(stat.rss.saturating_mul(procfs::page_size())),
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds",
                    saturating(
                        boot.saturating_add(stat.starttime / procfs::ticks_per_second().max(1)),
                    ),
                )?;
            }
        }
        if let Ok(fds) = process.fd_count() {
            gauge(
                "process_open_fds",
                "Open file descriptors",
                i64::try_from(fds).unwrap_or(i64::MAX),
            )?;
        }
        if let Ok(limits) = process.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                gauge(
                    "process_max_fds",
                    "Most file descriptors the process may open (its soft limit)",
                    saturating(max),
                )?;
            }
        }
        if let Ok(stat) = process.stat() {
            let ticks = stat.utime.saturating_add(stat.stime);
            let counter =
                ConstCounter::new(ticks as f64 / procfs::ticks_per_second().max(1) as f64);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// `llmux_build_info{version="..."} 1`, so dashboards can tell replicas' versions apart.
#[derive(Debug)]
struct BuildInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "llmux_build_info",
            "Always 1; the labels say which llmux build this is",
            None,
            MetricType::Gauge,
        )?;
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        };
        ConstGauge::new(1).encode(metric.encode_family(&labels)?)
    }
}

/// Which text format a scraper gets: OpenMetrics when its `Accept` asks for it, the classic
/// Prometheus text format (0.0.4) otherwise (curl, `promtool check metrics`, older scrapers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => CONTENT_TYPE,
            Self::Classic => CLASSIC_CONTENT_TYPE,
        }
    }
}

/// The classic Prometheus text format's content type.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text -> classic text. prometheus-client writes only OpenMetrics; the two differ
/// in a few lines, so this is hand-written rather than a second registry: a counter family's
/// `# HELP`/`# TYPE` name its samples' `_total` name, and there is no `# UNIT` or `# EOF`.
pub fn to_classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 256);
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_and_build_info_are_exported() {
        let text = Metrics::new(Arc::new(RoutingTable::new()))
            .render()
            .unwrap();
        for name in [
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
            "process_cpu_seconds_total ",
            "llmux_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_has_no_eof() {
        let text = Metrics::new(Arc::new(RoutingTable::new()))
            .render()
            .unwrap();
        let classic = to_classic(&text);
        assert!(
            classic.contains("# TYPE llmux_upstream_attempts_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP llmux_upstream_attempts_total Upstream"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE llmux_requests_in_flight gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
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

    fn rejected(path: &'static str, status: u16) -> RequestRecord<'static> {
        RequestRecord {
            endpoint: None,
            path,
            status,
            stream: false,
            duration: Duration::from_millis(3),
            first_byte: None,
            first_token: None,
            usage: None,
            outcome: "rejected",
            upstream_wait: None,
        }
    }

    fn requests_line(metrics: &Metrics, path: &str, status: u16) -> Option<String> {
        let prefix = format!(
            "llmux_requests_total{{model=\"unknown\",provider=\"none\",path=\"{path}\",status=\"{status}\"}} "
        );
        let text = metrics.render().unwrap();
        text.lines()
            .find(|line| line.starts_with(&prefix))
            .map(|line| line[prefix.len()..].to_owned())
    }

    #[test]
    fn each_request_counts_in_its_own_series_and_registry_whatever_came_before_on_the_thread() {
        // Issue 16: the thread keeps the last series recorded into; requests of other labels,
        // other registries and interleavings of them must still count where they belong.
        let (first, second) = (
            Metrics::new(Arc::new(RoutingTable::new())),
            Metrics::new(Arc::new(RoutingTable::new())),
        );
        let chat = "v1/chat/completions";
        for (metrics, path, status) in [
            (&first, chat, 200),
            (&first, chat, 200),
            (&second, chat, 200),
            (&first, chat, 404),
            (&first, chat, 200),
            (&first, "v1/embeddings", 200),
            (&second, chat, 200),
            (&second, chat, 200),
        ] {
            metrics.record(&rejected(path, status));
        }
        let count = |metrics, path, status| requests_line(metrics, path, status);
        assert_eq!(count(&first, chat, 200).as_deref(), Some("3"));
        assert_eq!(count(&first, chat, 404).as_deref(), Some("1"));
        assert_eq!(count(&first, "v1/embeddings", 200).as_deref(), Some("1"));
        assert_eq!(count(&second, chat, 200).as_deref(), Some("3"));
        assert_eq!(count(&second, chat, 404), None);
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
