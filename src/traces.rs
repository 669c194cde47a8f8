//! OpenTelemetry traces over OTLP (HTTP/protobuf or gRPC), off unless the standard `OTEL_*`
//! variables ask for them: one server span per request (accept → record) with a client span per
//! upstream attempt, attributes after OpenTelemetry's GenAI semantic conventions, and the W3C
//! `traceparent` continued from the client and sent upstream on each attempt.
//!
//! When tracing is off `AppState::traces` is `None` and no span is ever built: the request path
//! pays one `Option` check per stage that would touch a span.
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use opentelemetry_sdk::Resource;

use crate::proxy::usage::Usage;
use crate::routing::endpoint::Endpoint;

/// The tracer of an application whose `OTEL_*` settings turned tracing on.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// gRPC only: tonic's channel lives on a runtime of its own, off the request workers.
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("building the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("starting the OTLP exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How spans leave: the two OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    Grpc,
}

/// The `OTEL_*` settings llmux reads, resolved (pure: tested below).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub transport: Transport,
    /// The exporter's URL: for HTTP the full `/v1/traces` URL.
    pub endpoint: String,
    pub service_name: String,
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: SamplerSetting,
    pub timeout: Duration,
    pub schedule_delay: Option<Duration>,
    pub max_queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";

impl Settings {
    /// Reads the settings through `env`. `None`: tracing is off, the default (no OTLP endpoint
    /// and no `OTEL_TRACES_EXPORTER=otlp`, or `OTEL_SDK_DISABLED=true`, or
    /// `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, TracesError> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = var("OTEL_TRACES_EXPORTER");
        let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        match exporter.as_deref() {
            Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(other) => {
                return Err(TracesError::Invalid {
                    name: "OTEL_TRACES_EXPORTER",
                    value: other.to_owned(),
                    reason: "llmux exports traces over OTLP only (`otlp` or `none`)",
                })
            }
            None if traces_endpoint.is_none() && endpoint.is_none() => return Ok(None),
            None => {}
        }
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".to_owned());
        let transport = match protocol.as_str() {
            "http/protobuf" => Transport::HttpProtobuf,
            "grpc" => Transport::Grpc,
            _ => {
                return Err(TracesError::Invalid {
                    name: "OTEL_EXPORTER_OTLP_PROTOCOL",
                    value: protocol,
                    reason: "llmux speaks `http/protobuf` or `grpc`",
                })
            }
        };
        // As the specification says: the per-signal URL is used as it is; the base URL gets
        // `/v1/traces` over HTTP (gRPC has no path).
        let endpoint = match (traces_endpoint, endpoint, transport) {
            (Some(url), _, _) => url,
            (None, Some(base), Transport::HttpProtobuf) => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base), Transport::Grpc) => base,
            (None, None, Transport::HttpProtobuf) => format!("{DEFAULT_HTTP_ENDPOINT}/v1/traces"),
            (None, None, Transport::Grpc) => DEFAULT_GRPC_ENDPOINT.to_owned(),
        };
        let resource_attributes: Vec<(String, String)> = var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|text| {
                text.split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .filter(|(k, _)| !k.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "llmux".to_owned());
        let ratio = || -> Result<f64, TracesError> {
            let Some(text) = var("OTEL_TRACES_SAMPLER_ARG") else {
                return Ok(1.0);
            };
            match text.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(TracesError::Invalid {
                    name: "OTEL_TRACES_SAMPLER_ARG",
                    value: text,
                    reason: "a ratio between 0 and 1",
                }),
            }
        };
        let sampler = match var("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("traceidratio") => SamplerSetting::Ratio(ratio()?),
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerSetting::ParentBasedRatio(ratio()?),
            Some(other) => {
                return Err(TracesError::Invalid {
                    name: "OTEL_TRACES_SAMPLER",
                    value: other.to_owned(),
                    reason: "one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
                })
            }
        };
        let millis = |name: &'static str| -> Result<Option<Duration>, TracesError> {
            var(name)
                .map(|text| {
                    text.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                        TracesError::Invalid {
                            name,
                            value: text,
                            reason: "milliseconds",
                        }
                    })
                })
                .transpose()
        };
        let count = |name: &'static str| -> Result<Option<usize>, TracesError> {
            var(name)
                .map(|text| {
                    text.parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(TracesError::Invalid {
                            name,
                            value: text,
                            reason: "a positive count",
                        })
                })
                .transpose()
        };
        let timeout = match millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
            Some(timeout) => timeout,
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(Duration::from_secs(10)),
        };
        Ok(Some(Self {
            transport,
            endpoint,
            service_name,
            resource_attributes,
            sampler,
            timeout,
            schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY")?,
            max_queue_size: count("OTEL_BSP_MAX_QUEUE_SIZE")?,
            max_export_batch_size: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?,
        }))
    }
}

impl SamplerSetting {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

impl Traces {
    /// The tracer the `OTEL_*` variables (read through `env`) ask for, or `None` when tracing
    /// is off.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, TracesError> {
        Settings::from_env(env)?.map(Self::start).transpose()
    }

    /// Builds the exporter and the batch processor (its own thread) for `settings`.
    pub fn start(settings: Settings) -> Result<Self, TracesError> {
        let (exporter, runtime) = match settings.transport {
            Transport::HttpProtobuf => {
                let exporter = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(settings.endpoint.clone())
                    .with_timeout(settings.timeout)
                    .build()?;
                (exporter, None)
            }
            Transport::Grpc => {
                // tonic's channel spawns its connection tasks on the runtime it is built in.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("llmux-otlp")
                    .enable_all()
                    .build()
                    .map_err(TracesError::Runtime)?;
                let exporter = {
                    let _entered = runtime.enter();
                    let builder = SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(settings.endpoint.clone())
                        .with_timeout(settings.timeout);
                    // tonic applies no TLS to an https URL by itself: rustls with the webpki
                    // roots, as llmux's upstream client uses.
                    let builder = match settings.endpoint.starts_with("https://") {
                        true => builder.with_tls_config(ClientTlsConfig::new().with_webpki_roots()),
                        false => builder,
                    };
                    builder.build()?
                };
                (exporter, Some(runtime))
            }
        };
        let mut batch = BatchConfigBuilder::default();
        if let Some(delay) = settings.schedule_delay {
            batch = batch.with_scheduled_delay(delay);
        }
        if let Some(size) = settings.max_queue_size {
            batch = batch.with_max_queue_size(size);
        }
        if let Some(size) = settings.max_export_batch_size {
            batch = batch.with_max_export_batch_size(size);
        }
        let resource = Resource::builder_empty()
            .with_attributes(
                settings
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch.build())
                    .build(),
            )
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("llmux");
        tracing::info!(endpoint = %settings.endpoint, transport = ?settings.transport, service = %settings.service_name, "exporting traces over OTLP");
        Ok(Self {
            provider,
            tracer,
            runtime,
        })
    }

    /// The span of a request arriving with `headers` (its `traceparent`, when valid, is the
    /// parent): ended by the request's record.
    pub fn start_request(
        &self,
        headers: &HeaderMap,
        method: &'static str,
        path: &str,
        request_id: &str,
    ) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(format!("{method} {path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("llmux.request_id", request_id.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            context: parent.with_span(span),
            tracer: self.tracer.clone(),
            attempt: None,
        }
    }

    /// Sends what is still queued and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "flushing traces at shutdown failed");
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
        // Dropping a runtime blocks, which panics inside an async context: let it go instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// A request's span (in `context`) and the span of its current upstream attempt.
pub struct RequestTrace {
    context: Context,
    tracer: SdkTracer,
    attempt: Option<Span>,
}

/// What the record knows when it ends a request's span.
pub struct Finished<'a> {
    pub method: &'static str,
    pub path: &'static str,
    pub model: Option<&'a str>,
    pub endpoint: Option<&'a Endpoint>,
    pub status: u16,
    pub outcome: &'static str,
    pub usage: Option<Usage>,
    pub attempts: u32,
    pub stream: bool,
}

impl RequestTrace {
    /// Starts the span of attempt number `attempt` on `endpoint` (ending the previous one, if
    /// any is still open); its context is the `traceparent` upstream gets.
    pub fn start_attempt(&mut self, endpoint: &Endpoint, path: &'static str, attempt: u32) {
        self.end_attempt(None, "superseded");
        let operation = operation_name(path);
        let target = endpoint.target_model_name.to_string();
        let span = self
            .tracer
            .span_builder(format!("{operation} {target}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("gen_ai.request.model", target),
                KeyValue::new("gen_ai.provider.name", endpoint.provider.to_string()),
                KeyValue::new("gen_ai.system", endpoint.provider.to_string()),
                KeyValue::new("server.address", endpoint.upstream_host.to_string()),
                KeyValue::new("llmux.endpoint", endpoint.identity().to_string()),
                KeyValue::new("llmux.attempt", i64::from(attempt)),
            ])
            .start_with_context(&self.tracer, &self.context);
        self.attempt = Some(span);
    }

    /// Ends the current attempt's span: `status` is the answer's (none when none came back).
    pub fn end_attempt(&mut self, status: Option<u16>, outcome: &'static str) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        span.set_attribute(KeyValue::new("llmux.outcome", outcome));
        if status.is_none_or(|s| s >= 500) {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }

    /// Writes `traceparent` (and `tracestate`) for the upstream: the current attempt's span,
    /// else the request's.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let context = match &self.attempt {
            Some(span) => Context::new().with_remote_span_context(span.span_context().clone()),
            None => self.context.clone(),
        };
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }

    /// Ends the request's span with what the record knows.
    pub fn finish(mut self, finished: &Finished<'_>) {
        self.end_attempt(None, "ended");
        let span = self.context.span();
        span.update_name(format!("{} /{}", finished.method, finished.path));
        let mut attributes = vec![
            KeyValue::new("http.route", format!("/{}", finished.path)),
            KeyValue::new("http.response.status_code", i64::from(finished.status)),
            KeyValue::new("llmux.outcome", finished.outcome),
            KeyValue::new("llmux.attempts", i64::from(finished.attempts)),
            KeyValue::new("llmux.stream", finished.stream),
        ];
        if let Some(model) = finished.model {
            attributes.push(KeyValue::new(
                "gen_ai.operation.name",
                operation_name(finished.path),
            ));
            attributes.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
        }
        if let Some(endpoint) = finished.endpoint {
            let provider = endpoint.provider.to_string();
            attributes.push(KeyValue::new("gen_ai.provider.name", provider.clone()));
            attributes.push(KeyValue::new("gen_ai.system", provider.clone()));
            attributes.push(KeyValue::new("llmux.provider", provider));
            // The model llmux asked this provider for (the answer's own `model` is not parsed).
            attributes.push(KeyValue::new(
                "gen_ai.response.model",
                endpoint.target_model_name.to_string(),
            ));
            attributes.push(KeyValue::new(
                "llmux.endpoint",
                endpoint.identity().to_string(),
            ));
        }
        if let Some(usage) = finished.usage {
            let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            attributes.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                tokens(usage.prompt),
            ));
            attributes.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                tokens(usage.completion),
            ));
            attributes.push(KeyValue::new("llmux.usage.estimated", usage.estimated));
        }
        span.set_attributes(attributes);
        if finished.status >= 500 || !matches!(finished.outcome, "ok" | "rejected") {
            span.set_status(Status::error(finished.outcome));
        }
        span.end();
    }
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("span", self.context.span().span_context())
            .finish_non_exhaustive()
    }
}

/// `gen_ai.operation.name` for an operation's path: the convention's names where it has one,
/// the path otherwise.
pub fn operation_name(path: &'static str) -> &'static str {
    match path {
        "v1/chat/completions" | "v1/responses" => "chat",
        "v1/completions" => "text_completion",
        "v1/embeddings" => "embeddings",
        other => other.strip_prefix("v1/").unwrap_or(other),
    }
}

/// The propagator reads the client's headers through this.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The propagator writes the upstream's headers through this.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = HeaderName::from_bytes(key.as_bytes());
        let value = HeaderValue::from_str(&value);
        if let (Ok(name), Ok(value)) = (name, value) {
            if value.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check(vars: &[(&str, &str)], expected: Option<(Transport, &str)>) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let settings = Settings::from_env(&|name| vars.get(name).cloned()).unwrap();
        assert_eq!(
            settings
                .as_ref()
                .map(|s| (s.transport, s.endpoint.as_str())),
            expected,
            "{vars:?}"
        );
    }

    #[test]
    fn tracing_is_off_unless_an_otlp_endpoint_or_exporter_is_named() {
        check(&[], None);
        check(&[("OTEL_SERVICE_NAME", "x")], None);
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
            None,
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
            None,
        );
    }

    #[test]
    fn endpoints_follow_the_specification() {
        use Transport::{Grpc, HttpProtobuf};
        check(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
            Some((HttpProtobuf, "http://c:4318/v1/traces")),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
            ],
            Some((HttpProtobuf, "http://t:9/custom")),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            Some((Grpc, "http://c:4317")),
        );
        check(
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ],
            Some((HttpProtobuf, "http://localhost:4318/v1/traces")),
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for vars in [
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            [("OTEL_TRACES_SAMPLER", "sometimes")],
            [("OTEL_BSP_SCHEDULE_DELAY", "soon")],
        ] {
            let mut vars: HashMap<&str, &str> = vars.into_iter().collect();
            vars.insert("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
            let error = Settings::from_env(&|name| vars.get(name).map(|v| (*v).to_owned()))
                .unwrap_err()
                .to_string();
            assert!(
                vars.keys()
                    .any(|name| *name != "OTEL_EXPORTER_OTLP_ENDPOINT" && error.contains(name)),
                "{error}"
            );
        }
    }

    #[test]
    fn samplers_and_service_name_are_read() {
        let vars: HashMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod",
            ),
        ]
        .into_iter()
        .collect();
        let settings = Settings::from_env(&|name| vars.get(name).map(|v| (*v).to_owned()))
            .unwrap()
            .unwrap();
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedRatio(0.25));
        assert_eq!(settings.service_name, "from-attrs");
        assert_eq!(settings.resource_attributes.len(), 2);
    }
}
