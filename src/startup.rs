//! Application::build: load the config, bind, wire state and the URL map. Binding happens here,
//! never while parsing settings, and the real port is reported (tests bind port 0).
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::HttpMessage;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::api;
use crate::cli::ServeArgs;
use crate::config::load::{load_dir, process_env, FileLoad, Severity};
use crate::errors;
use crate::metrics::Metrics;
use crate::proxy::headers::{request_id, RequestId, X_REQUEST_ID};
use crate::routing::table::RoutingTable;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

/// Where provider keys are read from: the process environment in production, a map in tests.
pub type EnvSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub fn process_env_source() -> EnvSource {
    Arc::new(process_env)
}

impl Application {
    pub fn build(args: ServeArgs) -> anyhow::Result<Self> {
        Self::build_with_env(args, process_env_source())
    }

    pub fn build_with_env(args: ServeArgs, env: EnvSource) -> anyhow::Result<Self> {
        if !args.config_dir.is_dir() {
            anyhow::bail!(
                "the config dir `{}` does not exist or is not a directory (set --config-dir or LLMUX_CONFIG_DIR)",
                args.config_dir.display()
            );
        }
        let table = Arc::new(RoutingTable::new());
        let loads = load_dir(&args.config_dir, &*env)
            .with_context(|| format!("reading the config dir `{}`", args.config_dir.display()))?;
        let metrics = Arc::new(Metrics::new(Arc::clone(&table)));
        metrics.set_config_errors(loads.iter().map(|load| load.errors().count()).sum());
        publish(&table, loads);
        if table.route_count() == 0 {
            tracing::warn!(config_dir = %args.config_dir.display(), "no routes loaded: every model will answer 404");
        }

        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let port = listener.local_addr()?.port();
        let base_url = args
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{port}", args.host))
            .trim_end_matches('/')
            .to_owned();
        let state = web::Data::new(AppState {
            table,
            config_dir: args.config_dir.clone(),
            base_url,
            max_body_bytes: args.max_body_bytes,
            env,
            metrics,
        });
        let tls = Arc::new(tls_config()?);
        let connect_timeout = args.connect_timeout;
        let server_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(server_state.clone())
                .app_data(web::Data::new(upstream_client(
                    Arc::clone(&tls),
                    connect_timeout,
                )))
                .wrap_fn(|request, service| {
                    let id = request_id(request.headers());
                    request.extensions_mut().insert(RequestId(id.clone()));
                    let response = service.call(request);
                    async move {
                        let mut response = response.await?;
                        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
                        Ok(response)
                    }
                })
                .configure(api::configure)
                .default_service(web::to(errors::unknown_route))
        })
        .listen(listener)?;
        if let Some(workers) = args.workers {
            server = server.workers(workers.max(1));
        }
        tracing::info!(port, host = %args.host, "llmux listening");
        Ok(Self {
            port,
            server: server.run(),
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Publishes loaded files into the table and logs every problem.
pub fn publish(table: &RoutingTable, loads: Vec<FileLoad>) {
    let (mut files, mut errors) = (0, 0);
    for load in loads {
        files += 1;
        log_problems(&load);
        match load.endpoints {
            Some(endpoints) => {
                table.replace_file(&load.file, endpoints);
            }
            None => errors += 1,
        }
    }
    tracing::info!(
        files,
        files_with_errors = errors,
        models = table.models().len(),
        routes = table.route_count(),
        "config loaded"
    );
}

pub fn log_problems(load: &FileLoad) {
    for problem in &load.problems {
        let position = problem.position.map(|p| p.to_string());
        match problem.severity {
            Severity::Error => tracing::error!(
                file = %problem.file.display(), json_path = %problem.json_path, position, "config error: {}", problem.message
            ),
            Severity::Warning => tracing::warn!(
                file = %problem.file.display(), json_path = %problem.json_path, position, "config warning: {}", problem.message
            ),
        }
    }
}

/// rustls with the webpki roots and ring; ALPN offers HTTP/2 and HTTP/1.1.
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// One client per worker (awc's client is not `Send`), with an unbounded keep-alive pool.
fn upstream_client(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(tls)
        .timeout(connect_timeout)
        .handshake_timeout(connect_timeout)
        .limit(0)
        .conn_keep_alive(Duration::from_secs(60))
        .conn_lifetime(Duration::from_secs(600));
    awc::Client::builder()
        .connector(connector)
        .disable_timeout()
        .disable_redirects()
        .no_default_headers()
        .finish()
}
