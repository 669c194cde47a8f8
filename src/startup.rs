//! Application::build: load the config, bind, wire state and the URL map. Binding happens here,
//! never while parsing settings, and the real port is reported (tests bind port 0).
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_http::Request;
use actix_service::IntoServiceFactory;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{
    AppConfig, Response, Server, Service, ServiceFactory, ServiceRequest, ServiceResponse,
};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::access;
use crate::access::admin::AdminGate;
use crate::admin::settings::AccessApiSettings;
use crate::admin::{self, AccessApi};
use crate::api;
use crate::api::prefix::PathPrefixes;
use crate::cli::ServeArgs;
use crate::config::load::process_env;
use crate::config::watch::{ConfigWatch, LiveConfig, Scope};
use crate::demo;
use crate::health::HealthProbes;
use crate::metrics::Metrics;
use crate::oidc::callers::OidcCallers;
use crate::pipeline::accept::{self, FrontChecks, HeaderLimits};
use crate::pipeline::admit::Admitter;
use crate::pipeline::attempt::RetryPolicy;
use crate::realtime::{Realtime, RealtimeSettings};
use crate::routing::breaker::BreakerPolicy;
use crate::routing::table::RoutingTable;
use crate::shared::connection::RedisHealthMetrics;
use crate::shared::{SharedSettings, SharedState};
use crate::state::AppState;
use crate::store::Store;
use crate::traces::Traces;
use crate::upstream::Upstream;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    shared: web::Data<SharedState>,
    watch: ConfigWatch,
    realtime: web::Data<Realtime>,
    shutdown_grace: Duration,
    drain_delay: Duration,
    /// The built-in demo backend (src/demo): serves while the application does.
    demo: Server,
    /// The access store, when the admin or self-service API is on: the usage it has not written
    /// yet (it writes once a second) is written before the process exits.
    usage_store: Option<Store>,
}

/// Binds with `backlog` queued connections (std's `TcpListener::bind` uses 128, and actix
/// cannot change the backlog of a listener it is handed).
fn bind(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let address = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host resolves to no address",
        )
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As std does: a restart may bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
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
        // Before the first load: the loader resolves `builtin:demo` to this server's address.
        let demo = demo::start().context("starting the built-in demo backend")?;
        let env = demo::env_with_demo_url(env, demo.url.clone());
        let env_for_upstream = Arc::clone(&env);
        let table = Arc::new(RoutingTable::new());
        let key_files = Arc::new(access::reload::KeyFiles::new(Arc::new(
            access::table::AccessTable::with_labels(access::startup::label_set(&args)),
        )));
        let live = Arc::new(
            LiveConfig::new(&args.config_dir, Arc::clone(&table), Arc::clone(&env))
                .with_access(Arc::clone(&key_files)),
        );
        // Start-up and the watcher load through the same code.
        let started = std::time::Instant::now();
        let summary = live
            .reload(Scope::Full)
            .with_context(|| format!("reading the config dir `{}`", args.config_dir.display()))?;
        tracing::info!(
            files_read = summary.files_read,
            files_with_errors = summary.files_with_errors,
            models = table.models().len(),
            routes = table.route_count(),
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "config loaded"
        );
        // The admin credential is read once, here: the admin API, `/admin/*`, the status page
        // and the decision trace all check this one (`access::admin`).
        let access_settings = AccessApiSettings::from_args(&args.access, &*env)?;
        let admin_token = access_settings
            .as_ref()
            .and_then(|settings| settings.admin_token.clone());
        // The store (and its data dir) exists only when the admin or self-service API is on. Its
        // keys, policies and protected endpoints are the key table's `database` source.
        let access_api = access_settings
            .map(|settings| AccessApi::start(settings, Arc::clone(key_files.table())))
            .transpose()?
            .map(Arc::new);
        if let Some(access_api) = &access_api {
            access::database::follow(Arc::clone(key_files.table()), &access_api.store);
        }
        if table.route_count() == 0 {
            tracing::warn!(config_dir = %args.config_dir.display(), "no routes loaded: every model will answer 404");
        }

        let mut settings = SharedSettings::new(args.image_cache_bytes, args.image_cache_ttl);
        settings.redis_timeout = args.redis_timeout;
        settings.fail_closed = args.redis_fail_closed;
        let shared = SharedState::build(args.redis_url.as_deref(), settings)
            .context("--redis-url / LLMUX_REDIS_URL is not a Redis URL")?;
        // Limits count where the shared state lives: Redis with --redis-url, else this process.
        let mut access = access::startup::access_control(
            &args,
            &key_files,
            Arc::clone(&shared.counters),
            admin_token,
        )?;
        let usage_store = access_api.as_ref().map(|api| api.store.clone());
        if let Some(store) = &usage_store {
            access = access.with_usage_sink(Arc::new(store.clone()));
        }
        let access = Arc::new(access);
        let mut metrics = Metrics::new(Arc::clone(&table));
        if let Some(redis) = &shared.redis {
            metrics.register_collector(Box::new(RedisHealthMetrics(Arc::clone(redis.health()))));
            tracing::info!(
                deadline_ms = args.redis_timeout.as_secs_f64() * 1000.0,
                fail_closed = args.redis_fail_closed,
                "sharing state through redis"
            );
        }
        let metrics = Arc::new(metrics);
        let shared = web::Data::new(shared);
        let traces = Traces::from_env(&*env).context("configuring OpenTelemetry traces")?;
        let realtime = web::Data::new(Realtime::new(
            RealtimeSettings {
                idle_timeout: args.realtime_idle_timeout,
            },
            metrics.realtime.clone(),
        ));
        // `--oidc-v1`: the admin API's OIDC verifier (one key cache) identifies /v1 callers too.
        let oidc_callers = access_api.as_ref().and_then(|api| {
            let defaults = api.settings.oidc_v1.as_ref()?;
            Some(OidcCallers::new(Arc::clone(api.oidc.as_ref()?), defaults))
        });
        let admin_gate: web::Data<AdminGate> = web::Data::from(
            access_api
                .as_ref()
                .map_or_else(Default::default, |api| Arc::clone(&api.gate)),
        );

        let listener = bind(&args.host, args.port, args.backlog)
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
            base_url,
            max_body_bytes: args.max_body_bytes,
            live: Arc::clone(&live),
            responses: Arc::clone(&shared.owners),
            health: Arc::new(HealthProbes::new(args.health_cache_ttl)),
            shutting_down: AtomicBool::new(false),
            retry: RetryPolicy {
                max_retry_wait: args.max_retry_wait,
                breaker: BreakerPolicy {
                    eject_after: args.eject_after,
                    cooldown: args.eject_cooldown,
                },
            },
            max_upload_bytes: args.max_upload_bytes,
            images: Arc::clone(&shared.images),
            admitter: Admitter::new(access, metrics.access.clone()).with_oidc_callers(oidc_callers),
            metrics,
            spool_dir: args.spool_dir(),
            started_at: std::time::SystemTime::now(),
            client_body_timeout: args.client_body_timeout,
            upstream_header: args.upstream_header,
            traces,
        });
        let upstream = Upstream::new(
            args.connect_timeout,
            args.upstream_ca_file.as_deref(),
            &*env_for_upstream,
        )
        .map_err(|error| anyhow::anyhow!("upstream connectivity settings: {error}"))?;
        if !upstream.proxy().is_empty() {
            tracing::info!(proxy = ?upstream.proxy(), "upstream connections go through an egress proxy");
        }
        let parts = WorkerParts {
            state: state.clone(),
            shared: shared.clone(),
            realtime: realtime.clone(),
            admin_gate,
            upstream,
            access_api,
            header_limits: HeaderLimits {
                max_bytes: args.max_header_bytes,
                max_count: args.max_headers,
            },
            path_prefixes: args.path_prefix.clone(),
        };
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1);
        let cors_origins = args.cors_origins.clone();
        // Two shapes of the App, as the type of its layers differs: without CORS the front is one
        // layer (`accept::middleware`); with it, the checks sit inside `Cors`, the id and record
        // outside (issue 16: a disabled `Condition<Cors>` cost a layer and an answer body type
        // around every request).
        let server = if cors_origins.is_empty() {
            serve(
                HttpServer::new(move || {
                    let (state, checks) = (parts.state.clone(), parts.checks());
                    parts.app().wrap_fn(move |request, service| {
                        accept::middleware(request, service, &checks, &state)
                    })
                }),
                &args,
                workers,
                listener,
            )?
        } else {
            serve(
                HttpServer::new(move || {
                    let (state, checks) = (parts.state.clone(), parts.checks());
                    parts
                        .app()
                        .wrap_fn(move |request, service| {
                            accept::checks_middleware(request, service, &checks)
                        })
                        .wrap(cors(&cors_origins))
                        .wrap_fn(move |request, service| {
                            accept::accept_middleware(request, service, &state)
                        })
                }),
                &args,
                workers,
                listener,
            )?
        };
        let watch = ConfigWatch::start(live, args.watch)
            .with_context(|| format!("watching the config dir `{}`", args.config_dir.display()))?;
        tracing::info!(port, host = %args.host, "llmux listening");
        Ok(Self {
            port,
            server,
            state,
            shared,
            watch,
            realtime,
            shutdown_grace: args.shutdown_grace,
            drain_delay: args.drain_delay,
            demo: demo.server,
            usage_store,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// The state shared with other replicas (in memory without `--redis-url`).
    pub fn shared(&self) -> web::Data<SharedState> {
        self.shared.clone()
    }

    /// The realtime sessions (tests close them as a shutdown would).
    pub fn realtime(&self) -> web::Data<Realtime> {
        self.realtime.clone()
    }

    /// Serves until the server stops; SIGHUP reloads the config meanwhile. The config watcher
    /// stops with the server (or when this future is dropped).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            mut watch,
            demo,
            ..
        } = self;
        let demo_handle = demo.handle();
        let result = tokio::select! {
            result = server => result,
            result = demo => result,
            never = watch.forward_hangups() => match never {},
        };
        demo_handle.stop(false).await;
        result
    }

    /// Serves until SIGTERM or SIGINT, then drains: /ready turns 503, the listener closes, requests
    /// in flight (streams included) get the shutdown grace to finish. A second signal stops at once.
    /// SIGHUP keeps reloading the config meanwhile.
    pub async fn run_until_signalled(self) -> anyhow::Result<Shutdown> {
        let drain_delay = self.drain_delay;
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let Self {
            server,
            mut watch,
            state,
            realtime,
            shutdown_grace,
            demo,
            usage_store,
            ..
        } = self;
        let handle = server.handle();
        // The demo keeps serving until llmux has drained: requests in flight may be on it.
        let demo_handle = demo.handle();
        let _demo = actix_web::rt::spawn(demo);
        let mut server = actix_web::rt::spawn(server);
        let name = tokio::select! {
            served = &mut server => {
                served??;
                return Ok(Shutdown::Drained);
            }
            never = watch.forward_hangups() => match never {},
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        // Load balancers and Kubernetes' endpoints take a few seconds to notice: /ready says 503
        // at once, new connections are still served for the drain delay, then the listener closes.
        state.shutting_down.store(true, Ordering::Release);
        tracing::info!(
            signal = name,
            drain_delay_s = drain_delay.as_secs_f64(),
            "shutting down: /ready answers 503; still accepting for the drain delay, then draining requests in flight (a second signal stops at once)"
        );
        tokio::select! {
            () = tokio::time::sleep(drain_delay) => {}
            _ = terminate.recv() => return Ok(force()),
            _ = interrupt.recv() => return Ok(force()),
        }
        tracing::info!("drain delay over: closing the listener");
        let graceful = handle.stop(true);
        // Realtime sessions never end by themselves: they get the grace, minus a moment to send
        // their 1001 before actix cuts what is left.
        let realtime_deadline =
            shutdown_grace.saturating_sub((shutdown_grace / 4).min(Duration::from_secs(1)));
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(realtime_deadline).await;
            realtime.close_all();
        });
        tokio::select! {
            () = graceful => {
                server.await??;
                demo_handle.stop(false).await;
                if let Some(store) = &usage_store {
                    write_pending_usage(store).await;
                }
                if let Some(traces) = &state.traces {
                    traces.shutdown();
                }
                tracing::info!("drained, exiting");
                Ok(Shutdown::Drained)
            }
            _ = terminate.recv() => Ok(force()),
            _ = interrupt.recv() => Ok(force()),
        }
    }
}

/// What each worker's App is made of (built once, cloned into every worker).
#[derive(Clone)]
struct WorkerParts {
    state: web::Data<AppState>,
    shared: web::Data<SharedState>,
    realtime: web::Data<Realtime>,
    admin_gate: web::Data<AdminGate>,
    upstream: Upstream,
    access_api: Option<Arc<AccessApi>>,
    header_limits: HeaderLimits,
    /// Made into `PathPrefixes` per worker (not `Send`).
    path_prefixes: Vec<String>,
}

impl WorkerParts {
    fn checks(&self) -> FrontChecks {
        FrontChecks {
            limits: self.header_limits,
            prefixes: PathPrefixes::new(&self.path_prefixes),
        }
    }

    /// The App's data and URL map, without its middleware.
    fn app(
        &self,
    ) -> App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        // awc's client is not Send: each worker makes its own.
        let clients = self.upstream.clients();
        let client = clients.default_client();
        let access_api = self.access_api.clone();
        App::new()
            .app_data(self.state.clone())
            .app_data(self.shared.clone())
            .app_data(web::Data::new(clients))
            // The admin API's OIDC fetches use a plain client of their own.
            .app_data(web::Data::new(client.clone()))
            .app_data(self.realtime.clone())
            .app_data(self.admin_gate.clone())
            .configure(move |cfg| {
                if let Some(access_api) = &access_api {
                    admin::configure(cfg, access_api, &client);
                }
            })
            .configure(api::configure)
            .default_service(web::to(api::unknown_or_passthrough))
    }
}

/// The server's settings, whichever App shape it serves.
fn serve<F, I, S, B>(
    server: HttpServer<F, I, S, B>,
    args: &ServeArgs,
    workers: usize,
    listener: TcpListener,
) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    Ok(server
        // A client that closes its connection ends its request at once, even before the answer's
        // head: the handler is dropped, which cancels the upstream request (status 499).
        .h1_allow_half_closed(false)
        // A head and a body written apart (an answer whose body waits for something, like a
        // response id being stored in Redis) must not wait for the client's delayed ACK (Nagle:
        // 40 ms on Linux). nginx sets the same (tcp_nodelay on).
        .tcp_nodelay(true)
        // Signals are the binary's business (`run_until_signalled`): tests start many apps in one process.
        .disable_signals()
        .shutdown_timeout(args.shutdown_grace.as_secs().max(1))
        .workers(workers)
        // actix's limit is per worker: the flag's total is shared out.
        .max_connections(
            usize::try_from(args.max_connections)
                .unwrap_or(usize::MAX)
                .div_ceil(workers),
        )
        .client_request_timeout(args.header_read_timeout)
        .listen(listener)?
        .run())
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every request finished, or the grace ran out.
    Drained,
    /// A second signal cut requests in flight.
    Forced,
}

/// Writes the usage counted since the store's last batch (up to a second of it), so that a
/// restart or a rolling deploy does not hand keys back the requests and tokens they just used.
/// Bounded: a store that does not answer does not hold the exit.
async fn write_pending_usage(store: &Store) {
    match tokio::time::timeout(USAGE_WRITE_AT_EXIT, store.flush_usage()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "writing the last usage counts at shutdown failed");
        }
        Err(_) => tracing::warn!(
            timeout_s = USAGE_WRITE_AT_EXIT.as_secs_f64(),
            "writing the last usage counts at shutdown timed out"
        ),
    }
}

/// How long the exit waits for the store to take the last usage counts.
const USAGE_WRITE_AT_EXIT: Duration = Duration::from_secs(5);

/// actix ignores a second stop while a graceful one runs: the caller exits the process instead.
fn force() -> Shutdown {
    tracing::warn!("second signal: stopping at once, cutting requests in flight");
    Shutdown::Forced
}
/// CORS for browser apps (`--cors-origins`): preflights answered for any method and for the
/// headers browser SDKs send (`Authorization`, `OpenAI-Beta`, `x-stainless-*`, ...: any header
/// asked for), and every answer's headers readable by the page (`x-request-id`, rate limits).
fn cors(origins: &[String]) -> Cors {
    let cors = Cors::default()
        .allow_any_method()
        .allow_any_header()
        .expose_any_header()
        .max_age(3600);
    match origins.iter().any(|origin| origin == "*") {
        true => cors.allow_any_origin(),
        false => origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin)),
    }
}
