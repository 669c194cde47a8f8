//! Command line: every setting is a flag and an `LLMUX_*` environment variable (the flag wins).
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::access::AccessMode;
use crate::admin::settings::AccessApiArgs;
use crate::commands::admin::AdminArgs;
use crate::config::watch::WatchMode;
use crate::pipeline::attempt::UpstreamHeader;

#[derive(Debug, Parser)]
#[command(name = "llmux", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `llmux` alone is `llmux serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing would only add noise"
)]
pub enum Command {
    /// Serve the OpenAI-compatible API (the default).
    Serve(ServeArgs),
    /// Load the config dir, print the routing table and every problem; exit 1 on any error.
    Check(CheckArgs),
    /// GET /health on a running llmux (for container HEALTHCHECKs); exit 0 when it answers 200, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Client keys for access control.
    Keys(KeysArgs),
    /// Manage the access store without a server: `llmux admin keys list|create|revoke`.
    Admin(AdminArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Mint a key: prints it once, and the entry (with its SHA-256 only) to paste into a key file.
    New {
        /// The key's name, shown in logs and metrics [default: key-<digest prefix>].
        #[arg(long)]
        name: Option<String>,
        /// The owner its quotas are counted for [default: key:<name>].
        #[arg(long)]
        owner: Option<String>,
    },
}

impl Cli {
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Directory of provider JSON files.
    #[arg(long, env = "LLMUX_CONFIG_DIR", default_value = "./configs")]
    pub config_dir: PathBuf,
    /// The access store's data dir: its SQLite file's keys are checked too when it exists
    /// (never created).
    #[arg(long, env = "LLMUX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the access store whose keys are checked too; wins over --data-dir.
    #[arg(long, env = "LLMUX_DATABASE_URL", hide_env_values = true, value_parser = crate::commands::check::parse_secret)]
    pub database_url: Option<crate::secret::ApiKey>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Address llmux listens on (0.0.0.0 and :: are probed on loopback).
    #[arg(long, env = "LLMUX_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port llmux listens on.
    #[arg(long, env = "LLMUX_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Time allowed for the whole check, in seconds.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory of provider JSON files.
    #[arg(long, env = "LLMUX_CONFIG_DIR", default_value = "./configs")]
    pub config_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LLMUX_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "LLMUX_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Public URL of this instance, used in links it hands out [default: http://HOST:PORT].
    #[arg(long, env = "LLMUX_BASE_URL")]
    pub base_url: Option<String>,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `llmux=debug`).
    #[arg(long, env = "LLMUX_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log: String,
    /// Worker threads [default: number of cores].
    #[arg(long, env = "LLMUX_WORKERS")]
    pub workers: Option<usize>,
    /// Largest JSON request body accepted, in bytes.
    #[arg(long, env = "LLMUX_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Time allowed to connect to an upstream, in seconds.
    #[arg(long, env = "LLMUX_CONNECT_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
    /// PEM bundle of CA certificates trusted for every upstream, on top of the built-in web roots
    /// (a provider's `tls.ca_file` adds more for its own upstreams).
    #[arg(long, env = "LLMUX_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// How config dir changes are noticed: file events, polling (mounts without inotify), or
    /// only on SIGHUP.
    #[arg(long, env = "LLMUX_WATCH", value_enum, default_value_t = WatchMode::Notify)]
    pub watch: WatchMode,
    /// How long GET /health/{model} reuses a probe result, in seconds.
    #[arg(long, env = "LLMUX_HEALTH_CACHE_TTL", default_value = "2", value_parser = parse_seconds)]
    pub health_cache_ttl: Duration,
    /// On SIGTERM/SIGINT, how long requests in flight (streams included) get to finish, in seconds.
    #[arg(long, env = "LLMUX_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
    /// Longest wait before a retry that an upstream's Retry-After may ask for, in seconds; a
    /// longer one sends the 429 back to the client with its Retry-After.
    #[arg(long, env = "LLMUX_MAX_RETRY_WAIT", default_value = "10", value_parser = parse_seconds)]
    pub max_retry_wait: Duration,
    /// Consecutive failures that eject a pool member.
    #[arg(long, env = "LLMUX_EJECT_AFTER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,
    /// How long an ejected pool member gets no traffic, in seconds (doubles on repeat, up to 8x).
    #[arg(long, env = "LLMUX_EJECT_COOLDOWN", default_value = "30", value_parser = parse_seconds)]
    pub eject_cooldown: Duration,
    /// Largest multipart upload (audio transcriptions and translations, image edits and
    /// variations) accepted, in bytes.
    #[arg(long, env = "LLMUX_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Total bytes of images the image-data cache holds before evicting the least recently used.
    #[arg(long, env = "LLMUX_IMAGE_CACHE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub image_cache_bytes: u64,
    /// How long an image stays in the image-data cache, in seconds.
    #[arg(long, env = "LLMUX_IMAGE_CACHE_TTL", default_value = "3600", value_parser = parse_seconds)]
    pub image_cache_ttl: Duration,
    /// Redis holding the state replicas share (response ids, image data, limit counters,
    /// concurrency leases), e.g. `redis://redis:6379/0`. Unset: everything stays in this
    /// process (one instance).
    #[arg(long, env = "LLMUX_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Deadline of every Redis call, in seconds; past it the request goes on without Redis.
    #[arg(long, env = "LLMUX_REDIS_TIMEOUT", default_value = "0.05", value_parser = parse_seconds)]
    pub redis_timeout: Duration,
    /// Refuse requests whose limits cannot be checked while Redis is unreachable (default:
    /// admit them).
    #[arg(long, env = "LLMUX_REDIS_FAIL_CLOSED")]
    pub redis_fail_closed: bool,
    /// A realtime (WebSocket) session with no frame either way for this long is closed, in seconds.
    #[arg(long, env = "LLMUX_REALTIME_IDLE_TIMEOUT", default_value = "300", value_parser = parse_seconds)]
    pub realtime_idle_timeout: Duration,
    /// Connections the kernel queues for llmux before refusing new ones (the listen backlog).
    #[arg(long, env = "LLMUX_BACKLOG", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,
    /// Connections served at once, over all workers. At the limit llmux stops accepting: new
    /// connections wait in the backlog (then are refused by the kernel) while open ones are served.
    #[arg(long, env = "LLMUX_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Time a client gets to send a request's headers, in seconds (then 408 and the connection closes).
    #[arg(long, env = "LLMUX_HEADER_READ_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub header_read_timeout: Duration,
    /// Largest total size of a request's headers (names and values), in bytes: past it, 431.
    #[arg(long, env = "LLMUX_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Most headers a request may carry: past it, 431 (actix itself refuses more than 96).
    #[arg(long, env = "LLMUX_MAX_HEADERS", default_value_t = DEFAULT_MAX_HEADERS)]
    pub max_headers: usize,
    /// On SIGTERM, how long /ready answers 503 while llmux still accepts new connections, in
    /// seconds, so load balancers stop sending before the listener closes.
    #[arg(long, env = "LLMUX_DRAIN_DELAY", default_value = "5", value_parser = parse_seconds_or_zero)]
    pub drain_delay: Duration,
    /// Directory for spooled upload parts [default: the system temp dir].
    #[arg(long, env = "LLMUX_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Longest a client may stay silent while sending a request body (JSON or upload), in
    /// seconds: then 408.
    #[arg(long, env = "LLMUX_CLIENT_BODY_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub client_body_timeout: Duration,
    /// What the `x-llmux-upstream` answer header shows: `off` (no header), or `name`
    /// (`provider/target_model` of the member that answered, never its address).
    #[arg(long, env = "LLMUX_UPSTREAM_HEADER", value_enum, default_value_t = UpstreamHeader::Off)]
    pub upstream_header: UpstreamHeader,
    /// Browser origins allowed to call the API (CORS): a comma list
    /// (`https://app.example.com,http://localhost:3000`) or `*` [default: none, CORS off].
    #[arg(long, env = "LLMUX_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_cors_origin)]
    pub cors_origins: Vec<String>,
    /// Extra prefixes the same API is served under (`/inference` serves `/inference/v1/...`):
    /// repeat the flag or give a comma list.
    #[arg(long, env = "LLMUX_PATH_PREFIX", value_delimiter = ',', value_parser = parse_path_prefix)]
    pub path_prefix: Vec<String>,
    /// Whether proxied requests need a client key: `auto` turns on with the first key file
    /// loaded and stays on.
    #[arg(long, env = "LLMUX_ACCESS_CONTROL", value_enum, default_value_t = AccessMode::Auto)]
    pub access_control: AccessMode,
    /// Put the quota decision trace on every answer (`on`), not only on admins' requests.
    #[arg(long, env = "LLMUX_QUOTA_DECISION_TRACE", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub quota_decision_trace: bool,
    /// Comma-separated key names that get their own `key` label in metrics; every other key is
    /// `other` [default: the first 100 key names in name order].
    #[arg(long, env = "LLMUX_KEY_METRICS_LABELS")]
    pub key_metrics_labels: Option<String>,
    /// The admin and self-service APIs, their store and OIDC.
    #[command(flatten)]
    pub access: AccessApiArgs,
}

/// actix's default listen backlog (std's is 128).
pub const DEFAULT_BACKLOG: u32 = 1024;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8192;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// The longest duration a flag accepts: one year. Durations become `Instant::now() + d`, which
/// panics on overflow.
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(365 * 86_400);

impl ServeArgs {
    /// The settings a test or an embedding program starts from.
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            host: "127.0.0.1".into(),
            port: 0,
            base_url: None,
            log: "info".into(),
            workers: None,
            max_body_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            upstream_ca_file: None,
            watch: WatchMode::Notify,
            health_cache_ttl: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            max_retry_wait: Duration::from_secs(10),
            eject_after: 5,
            eject_cooldown: Duration::from_secs(30),
            max_upload_bytes: 100 * 1024 * 1024,
            image_cache_bytes: 512 * 1024 * 1024,
            image_cache_ttl: Duration::from_secs(3600),
            redis_url: None,
            redis_timeout: crate::shared::DEFAULT_REDIS_TIMEOUT,
            redis_fail_closed: false,
            realtime_idle_timeout: Duration::from_secs(300),
            backlog: DEFAULT_BACKLOG,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            drain_delay: Duration::from_secs(5),
            spool_dir: None,
            client_body_timeout: Duration::from_secs(30),
            upstream_header: UpstreamHeader::Off,
            cors_origins: Vec::new(),
            path_prefix: Vec::new(),
            access_control: AccessMode::Auto,
            quota_decision_trace: false,
            key_metrics_labels: None,
            access: AccessApiArgs::default(),
        }
    }

    /// Where upload parts are spooled: `--spool-dir`, or the system temp dir.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// An origin as `--cors-origins` takes it: `*`, or `scheme://host[:port]` (no path).
pub fn parse_cors_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_owned());
    }
    let uri: actix_web::http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not an origin: use `https://app.example.com` or `*`"))?;
    let plain = uri.scheme().is_some()
        && uri.host().is_some()
        && matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("" | "/")
        );
    match plain && !text.ends_with('/') {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "`{text}` is not an origin: scheme and host only, like `https://app.example.com`"
        )),
    }
}

/// A path prefix as `--path-prefix` takes it: one leading slash, none trailing, no `?` or `#`.
pub fn parse_path_prefix(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Err("a path prefix names at least one path segment, like `/inference`".into());
    }
    if trimmed
        .chars()
        .any(|c| matches!(c, '?' | '#' | '{' | '}') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{text}` is not a path prefix: use path characters only, like `/api`"
        ));
    }
    Ok(format!("/{trimmed}"))
}

/// Checks a log filter when the flags are parsed, so a bad one is reported once, naming the flag.
pub fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|error| format!("not a log filter ({error}); try `info` or `llmux=debug,info`"))
}

/// Parses a positive number of seconds (`10`, `0.5`), at most [`MAX_FLAG_DURATION`].
/// Parses `on`/`off` (also `true`/`false`, `1`/`0`, `yes`/`no`).
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!("`{text}` is not on or off")),
    }
}

/// Parses a positive number of seconds (`10`, `0.5`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds_or_zero(text)? {
        Duration::ZERO => Err(format!("`{text}` must be a positive number of seconds")),
        duration => Ok(duration),
    }
}

/// Parses a number of seconds that may be 0, at most [`MAX_FLAG_DURATION`].
pub fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(format!("`{text}` must be a positive number of seconds"));
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if duration <= MAX_FLAG_DURATION => Ok(duration),
        _ => Err(format!(
            "`{text}` is too long: at most {} seconds (a year)",
            MAX_FLAG_DURATION.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_llmux_is_serve_and_flags_parse() {
        let cli =
            Cli::try_parse_from(["llmux", "--port", "9", "--connect-timeout", "0.5"]).unwrap();
        match cli.into_command() {
            Command::Serve(args) => {
                assert_eq!(args.port, 9);
                assert_eq!(args.connect_timeout, Duration::from_millis(500));
            }
            _ => panic!("expected serve"),
        }
        let cli = Cli::try_parse_from(["llmux", "check", "--config-dir", "/x"]).unwrap();
        assert!(
            matches!(cli.into_command(), Command::Check(a) if a.config_dir == std::path::Path::new("/x"))
        );
        let cli = Cli::try_parse_from(["llmux", "keys", "new", "--name", "n"]).unwrap();
        assert!(matches!(
            cli.into_command(),
            Command::Keys(KeysArgs { command: KeysCommand::New { name: Some(n), owner: None } }) if n == "n"
        ));
        let cli = Cli::try_parse_from([
            "llmux",
            "--access-control",
            "on",
            "--quota-decision-trace",
            "on",
        ])
        .unwrap();
        assert!(matches!(
            cli.into_command(),
            Command::Serve(ServeArgs {
                access_control: AccessMode::On,
                quota_decision_trace: true,
                ..
            })
        ));
        assert!(parse_switch("maybe").is_err());
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("NaN").is_err());
        // Issue 20: absurd durations overflowed `Instant + Duration`.
        assert!(parse_seconds("1e19").is_err());
        assert_eq!(parse_seconds_or_zero("0"), Ok(Duration::ZERO));
    }
}
