//! OpenTelemetry traces (issue 17): llmux exports over OTLP to a receiver started by the test on
//! 127.0.0.1 that decodes what it gets (HTTP/protobuf with prost, gRPC with tonic), and the spans,
//! their links, attributes and the `traceparent` sent upstream are checked.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::helpers::{eventually, provider_file, spawn_app, Binary, MockUpstream, Reply, Spawn};

const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn http_protobuf_traces_continue_the_clients_trace_with_a_span_per_attempt() {
    let receiver = HttpReceiver::start();
    let mut file = provider_file("mock", "", &[("m", "target-m")]);
    file["mock"]["max_retries"] = json!(2);
    let app = Spawn::new()
        .file("provider.json", file)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_SERVICE_NAME", "llmux-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start()
        .await;
    app.upstream
        .push(Reply::json(503, json!({"error": {"message": "busy"}})));
    app.upstream.push(Reply::Echo);

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"),
        )
        .header("x-request-id", "traced-request")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmux-attempts"], "2");
    response.text().await.unwrap();

    let spans = receiver.collected.spans_of(CLIENT_TRACE_ID, 3).await;
    let request = only(&spans, SpanKind::Server);
    assert_eq!(request.service, "llmux-under-test");
    let span = &request.span;
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN_ID);
    assert_eq!(span.name, "POST /v1/chat/completions");
    let attributes = attribute_map(span);
    for (key, value) in [
        ("llmux.request_id", "traced-request"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "m"),
        ("gen_ai.response.model", "target-m"),
        ("gen_ai.provider.name", "mock"),
        ("gen_ai.usage.input_tokens", "5"),
        ("gen_ai.usage.output_tokens", "2"),
        ("http.route", "/v1/chat/completions"),
        ("http.response.status_code", "200"),
        ("llmux.outcome", "ok"),
        ("llmux.attempts", "2"),
    ] {
        assert_eq!(
            attributes.get(key).map(String::as_str),
            Some(value),
            "{key}: {attributes:?}"
        );
    }

    let mut attempts: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|r| attributes_of(&r.span, "llmux.attempt"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (attempt, (received, status)) in attempts.iter().zip(["503", "200"]).enumerate() {
        let attempt_span = &received.span;
        assert_eq!(
            attempt_span.parent_span_id, span.span_id,
            "an attempt is the request's child"
        );
        let attributes = attribute_map(attempt_span);
        assert_eq!(attributes["llmux.attempt"], (attempt + 1).to_string());
        assert_eq!(attributes["http.response.status_code"], status);
        assert_eq!(attributes["gen_ai.request.model"], "target-m");
        assert_eq!(attempt_span.name, "chat target-m");
        let failed = attempt_span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32);
        assert_eq!(failed, status == "503", "{attempt_span:?}");
    }
    // Each attempt told the upstream its own span as the parent, in the client's trace.
    let sent: Vec<String> = app
        .upstream
        .requests()
        .iter()
        .map(|r| r.header("traceparent").unwrap_or("none").to_owned())
        .collect();
    let expected: Vec<String> = attempts
        .iter()
        .map(|r| format!("00-{CLIENT_TRACE_ID}-{}-01", hex(&r.span.span_id)))
        .collect();
    assert_eq!(sent, expected);

    // A request llmux refuses has its span too, without attempts.
    app.post_json("/v1/chat/completions", json!({"model": "nope"}))
        .await;
    let (rejected, _) = eventually(
        Duration::from_secs(10),
        "the refused request's span",
        || {
            let found =
                receiver.collected.all().into_iter().find(|r| {
                    attributes_of(&r.span, "llmux.outcome").as_deref() == Some("rejected")
                });
            async move { found }
        },
    )
    .await;
    assert_eq!(
        attribute_map(&rejected.span)["http.response.status_code"],
        "404"
    );
    let rejected_children = receiver
        .collected
        .all()
        .into_iter()
        .filter(|r| r.span.parent_span_id == rejected.span.span_id)
        .count();
    assert_eq!(rejected_children, 0);
    assert!(receiver.errors.lock().unwrap().is_empty());
}

#[tokio::test]
async fn grpc_traces_start_a_trace_when_the_client_sends_none() {
    let receiver = GrpcReceiver::start().await;
    let app = Spawn::new()
        .file(
            "provider.json",
            provider_file("mock", "", &[("m", "target-m")]),
        )
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start()
        .await;
    app.upstream.push(Reply::Echo);

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("x-request-id", "grpc-traced")
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("[DONE]"));

    let (request, _) = eventually(Duration::from_secs(10), "the request's span", || {
        let found =
            receiver.collected.all().into_iter().find(|r| {
                attributes_of(&r.span, "llmux.request_id").as_deref() == Some("grpc-traced")
            });
        async move { found }
    })
    .await;
    assert_eq!(request.service, "llmux");
    assert!(
        request.span.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    let trace_id = hex(&request.span.trace_id);
    let spans = receiver.collected.spans_of(&trace_id, 2).await;
    let attempt = only(&spans, SpanKind::Client);
    assert_eq!(attempt.span.parent_span_id, request.span.span_id);
    let attributes = attribute_map(&request.span);
    assert_eq!(attributes["llmux.stream"], "true");
    assert_eq!(attributes["gen_ai.request.model"], "m");
    assert!(
        attributes.contains_key("gen_ai.usage.output_tokens"),
        "{attributes:?}"
    );
    assert_eq!(
        app.upstream.last_request().header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", hex(&attempt.span.span_id)).as_str())
    );
}

#[tokio::test]
async fn the_binary_reads_otel_variables_and_flushes_its_spans_at_shutdown() {
    let receiver = HttpReceiver::start();
    let upstream = MockUpstream::start().await;
    upstream.push(Reply::Echo);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        provider_file("mock", "", &[("m", "t")])
            .to_string()
            .replace("{UPSTREAM}", &upstream.url),
    )
    .unwrap();
    let traces_url = format!("{}/v1/traces", receiver.url);
    let mut binary = Binary::start(
        dir.path(),
        &[],
        &[
            ("TEST_PROVIDER_KEY", "sk-binary"),
            ("LLMUX_DRAIN_DELAY", "0"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
            ("OTEL_SERVICE_NAME", "llmux-binary"),
            // Only the flush at shutdown can deliver the span in time.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let response = reqwest::Client::new()
        .post(binary.url("/v1/chat/completions"))
        .header("x-request-id", "binary-traced")
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    assert!(
        receiver.collected.all().is_empty(),
        "nothing sent before the batch is due"
    );

    let pid = binary.child.id().expect("llmux is running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = tokio::time::timeout(Duration::from_secs(20), binary.child.wait())
        .await
        .expect("llmux exits within 20 s of SIGTERM")
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    let spans = receiver.collected.all();
    let request = spans
        .iter()
        .find(|r| attributes_of(&r.span, "llmux.request_id").as_deref() == Some("binary-traced"))
        .unwrap_or_else(|| panic!("the request's span was flushed: {spans:#?}"));
    assert_eq!(request.service, "llmux-binary");
}

#[tokio::test]
async fn without_otel_settings_the_clients_traceparent_passes_through_untouched() {
    let app = spawn_app().await;
    app.upstream.push(Reply::Echo);
    let traceparent = format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("traceparent", &traceparent)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.upstream.last_request().header("traceparent"),
        Some(traceparent.as_str())
    );
}

/// One exported span and the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Default)]
struct Collected {
    spans: Mutex<Vec<Received>>,
}

impl Collected {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| value_of(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) for `count` spans of the trace `trace_id`.
    async fn spans_of(&self, trace_id: &str, count: usize) -> Vec<Received> {
        let (spans, _) = eventually(Duration::from_secs(10), "the trace's spans", || {
            let spans: Vec<Received> = self
                .all()
                .into_iter()
                .filter(|r| hex(&r.span.trace_id) == trace_id)
                .collect();
            async move { (spans.len() >= count).then_some(spans) }
        })
        .await;
        assert_eq!(spans.len(), count, "{spans:#?}");
        spans
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
struct HttpReceiver {
    url: String,
    collected: Arc<Collected>,
    errors: Arc<Mutex<Vec<String>>>,
    handle: ServerHandle,
}

impl HttpReceiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let collected = Arc::new(Collected::default());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (state, problems) = (Arc::clone(&collected), Arc::clone(&errors));
        let server = HttpServer::new(move || {
            let state = web::Data::from(Arc::clone(&state));
            let problems = web::Data::new(Arc::clone(&problems));
            App::new()
                .app_data(state)
                .app_data(problems)
                .route("/v1/traces", web::post().to(export))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            collected,
            errors,
            handle,
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn export(
    request: HttpRequest,
    body: web::Bytes,
    collected: web::Data<Collected>,
    errors: web::Data<Arc<Mutex<Vec<String>>>>,
) -> HttpResponse {
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/x-protobuf" {
        errors
            .lock()
            .unwrap()
            .push(format!("content type {content_type}"));
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(decoded) => {
            collected.add(decoded);
            HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .body(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(error) => {
            errors.lock().unwrap().push(error.to_string());
            HttpResponse::BadRequest().finish()
        }
    }
}

/// An OTLP/gRPC receiver: tonic's `TraceService`.
struct GrpcReceiver {
    url: String,
    collected: Arc<Collected>,
    task: tokio::task::JoinHandle<()>,
}

struct Sink(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl GrpcReceiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let collected = Arc::new(Collected::default());
        let service = TraceServiceServer::new(Sink(Arc::clone(&collected)));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            served.expect("the gRPC receiver serves");
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            collected,
            task,
        }
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn only(spans: &[Received], kind: SpanKind) -> Received {
    let matching: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.kind == kind as i32)
        .collect();
    assert_eq!(matching.len(), 1, "one {kind:?} span in {spans:#?}");
    matching[0].clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(value: Option<&AnyValue>) -> Option<String> {
    Some(match value? {
        AnyValue::StringValue(text) => text.clone(),
        AnyValue::IntValue(number) => number.to_string(),
        AnyValue::BoolValue(flag) => flag.to_string(),
        AnyValue::DoubleValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

fn value_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| render(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}

fn attributes_of(span: &Span, key: &str) -> Option<String> {
    value_of(&span.attributes, key)
}

fn attribute_map(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = render(kv.value.as_ref().and_then(|v| v.value.as_ref()))?;
            Some((kv.key.clone(), value))
        })
        .collect()
}
