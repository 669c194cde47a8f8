//! Config dir -> validated endpoints per file, plus every problem with file, JSON path and line:column.
//!
//! The server, the watcher and `llmux check` all load through here. Problems are values: a file
//! with any error contributes no endpoints (its callers keep its last good version), warnings never
//! stop a file.
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;
use serde::Serialize;

use super::adapt::{self, Finding, Sources};
use super::locate::{display_path, locate, position_of, Position, Segment};
use super::schema::{
    ConfigFile, EndpointSchema, ModelSchema, ProviderSchema, TlsSchema, ENDPOINT_KEYS, MODEL_KEYS,
    PROVIDER_KEYS,
};
use crate::demo::settings::{
    DemoProblem, DemoSchema, BUILTIN_DEMO, DEMO_URL_VARIABLE, UNSTARTED_DEMO_URL,
};
use crate::routing::endpoint::{
    host_header_of, identity_of, join_url, normalize_path, Endpoint, UpstreamImageFormat,
    DEFAULT_MAX_RETRIES,
};
use crate::routing::families::{Family, FAMILIES_KEY, PASSTHROUGH_MODEL, PASSTHROUGH_PATH};
use crate::secret::ApiKey;
use crate::upstream::tls::{TlsFiles, TlsSettings};

/// Timeouts when neither the endpoint nor its provider sets one (fast-openai-api-proxy's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest timeout a file may set: one day. A timeout becomes `Instant::now() + timeout` on
/// every request, which overflows (and panics a worker) for absurd values such as `1e19`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Looks an environment variable up. The server passes the process environment; tests pass a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A problem in a config file.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    pub json_path: String,
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}", self.file.display())?;
        if let Some(position) = self.position {
            write!(f, ":{position}")?;
        }
        write!(f, ": {severity}: {} (at {})", self.message, self.json_path)
    }
}

/// One file's outcome: its endpoints when it has no error, and every problem found.
#[derive(Debug)]
pub struct FileLoad {
    pub file: PathBuf,
    pub endpoints: Option<Vec<Endpoint>>,
    pub problems: Vec<Problem>,
}

impl FileLoad {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
}

/// The config files of a dir: every `*.json` directly in it, in name order. Entries starting with
/// a dot are skipped: Kubernetes' `..data` links, editors' lock and swap files.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(scan_dir(dir)?.files)
}

/// What a scan of the config dir found: the files to read, and the `*.json` entries that cannot
/// be read as one (each worth a warning: a broken ConfigMap link hides a whole provider).
#[derive(Debug, Default)]
pub struct DirScan {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<Skipped>,
}

/// A `*.json` entry of the config dir that is not a readable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: &'static str,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: warning: skipped: {}",
            self.path.display(),
            self.reason
        )
    }
}

const ELOOP: i32 = 40;

/// Lists the config dir. Fails only when the dir itself cannot be read.
pub fn scan_dir(dir: &Path) -> std::io::Result<DirScan> {
    let mut scan = DirScan::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        // Follows symlinks, as ConfigMap mounts need.
        let reason = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                scan.files.push(path);
                continue;
            }
            Ok(meta) if meta.is_dir() => "it is a directory, not a file",
            Ok(_) => "it is not a regular file (a FIFO, socket or device)",
            // ELOOP (40 on Linux): `ErrorKind::FilesystemLoop` is not stable yet.
            Err(error) if error.raw_os_error() == Some(ELOOP) => "it is a symlink loop",
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                "it is a symlink to nothing (dangling)"
            }
            Err(_) => "it cannot be read",
        };
        scan.skipped.push(Skipped { path, reason });
    }
    scan.files.sort();
    scan.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

pub fn load_file(file: &Path, env: EnvLookup<'_>) -> FileLoad {
    match std::fs::read_to_string(file) {
        Ok(text) => parse_file(file, &text, env),
        Err(error) => FileLoad {
            file: file.to_path_buf(),
            endpoints: None,
            problems: vec![Problem {
                severity: Severity::Error,
                file: file.to_path_buf(),
                json_path: "$".into(),
                position: None,
                message: format!("cannot read the file: {error}"),
            }],
        },
    }
}

/// Parses and validates one file's text.
pub fn parse_file(file: &Path, text: &str, env: EnvLookup<'_>) -> FileLoad {
    let mut report = Report {
        file,
        text,
        problems: Vec::new(),
        findings_seen: HashSet::new(),
    };
    let Some(config) = report.parse(text) else {
        return report.finish(None);
    };
    let file_arc: Arc<Path> = Arc::from(file);
    let mut endpoints = Vec::new();
    for (provider_name, provider) in &config.0 {
        let provider_path = vec![Segment::Key(provider_name.clone())];
        let at = |key: &str| {
            let mut path = provider_path.clone();
            path.push(Segment::Key(key.to_owned()));
            path
        };
        let provider_arc: Arc<str> = Arc::from(provider_name.as_str());
        let provider_request_timeout =
            report.timeout(provider.request_timeout, at("request_timeout"));
        let provider_health_timeout = report.timeout(provider.health_timeout, at("health_timeout"));
        let (key_variable, api_key) = match &provider.api_key_variable {
            None => (None, None),
            Some(variable) => {
                let key = env(variable).filter(|k| !k.is_empty());
                if key.is_none() {
                    report.warn(
                        at("api_key_variable"),
                        format!("environment variable `{variable}` is not set; requests to provider `{provider_name}` go upstream without a key"),
                    );
                }
                (
                    Some(Box::<str>::from(variable.as_str())),
                    key.map(ApiKey::new),
                )
            }
        };
        // The header value itself is built per endpoint (config::adapt: auth_header, auth_scheme).
        if api_key
            .as_ref()
            .is_some_and(|key| HeaderValue::from_str(key.expose()).is_err())
        {
            report.error(
                at("api_key_variable"),
                "the key in this variable contains characters not allowed in an HTTP header".into(),
            );
        }
        let model_less = model_less_endpoints(provider, &provider_path, &mut report);
        if provider.models.is_empty() && model_less.is_empty() {
            report.warn(
                provider_path.clone(),
                format!("provider `{provider_name}` declares no models"),
            );
        }
        // `builtin:demo` is resolved per endpoint (src/demo), never validated as a URL.
        let provider_base = provider
            .target_base_url
            .as_ref()
            .filter(|url| *url != BUILTIN_DEMO)
            .map(|url| {
                report
                    .base_url(url, at("target_base_url"))
                    .map(|authority| (url, authority))
            });
        let provider_tls = provider
            .tls
            .as_ref()
            .map(|tls| report.tls(file, tls, at("tls")));
        let prefix = provider.prefix.as_deref().unwrap_or("");
        let models = provider.models.iter().map(|(model_key, model)| {
            let mut path = at("models");
            path.push(Segment::Key(model_key.clone()));
            (format!("{prefix}{model_key}"), path, model)
        });
        // Families and passthrough are routes of reserved table models (`@files`), no prefix.
        let model_less = model_less
            .iter()
            .map(|(name, path, model)| (name.clone(), path.clone(), model));
        for (exposed, model_path, model) in models.chain(model_less) {
            let exposed: Arc<str> = Arc::from(exposed);
            if exposed.is_empty() {
                report.error(model_path.clone(), "the exposed model name is empty".into());
            }
            if model.endpoints.is_empty() {
                report.warn(
                    model_path.clone(),
                    format!("model `{exposed}` has no endpoints"),
                );
            }
            for (index, endpoint) in model.endpoints.iter().enumerate() {
                let endpoint_path = {
                    let mut path = model_path.clone();
                    path.push(Segment::Key("endpoints".into()));
                    path.push(Segment::Index(index));
                    path
                };
                let field = |key: &str| {
                    let mut path = endpoint_path.clone();
                    path.push(Segment::Key(key.to_owned()));
                    path
                };
                let request_timeout = report
                    .timeout(endpoint.request_timeout, field("request_timeout"))
                    .or(provider_request_timeout)
                    .unwrap_or(DEFAULT_TIMEOUT);
                let health_timeout = report
                    .timeout(endpoint.health_timeout, field("health_timeout"))
                    .or(provider_health_timeout)
                    .unwrap_or(DEFAULT_TIMEOUT);
                let weight = report.weight(endpoint.weight, field("weight"));
                let max_retries = endpoint
                    .max_retries
                    .or(provider.max_retries)
                    .unwrap_or(DEFAULT_MAX_RETRIES);
                let path = normalize_path(&endpoint.path);
                if path.is_empty() {
                    report.error(field("path"), "the path is empty".into());
                    continue;
                }
                let builtin_demo = endpoint
                    .target_base_url
                    .as_deref()
                    .or(provider.target_base_url.as_deref())
                    == Some(BUILTIN_DEMO);
                let demo_base_url;
                let (base_url, authority) = match (&endpoint.target_base_url, &provider_base) {
                    _ if builtin_demo => {
                        match demo_base(provider.demo.as_ref(), endpoint.demo.as_ref(), env) {
                            Ok((url, authority)) => {
                                demo_base_url = url;
                                (&demo_base_url, authority)
                            }
                            Err(problem) => {
                                let on_endpoint =
                                    endpoint.demo.is_some_and(|d| d.sets(problem.key));
                                let mut path = if on_endpoint {
                                    field("demo")
                                } else {
                                    at("demo")
                                };
                                path.push(Segment::Key(problem.key.into()));
                                report.error(path, problem.message);
                                continue;
                            }
                        }
                    }
                    (Some(url), _) => match report.base_url(url, field("target_base_url")) {
                        Some(authority) => (url, authority),
                        None => continue,
                    },
                    (None, Some(Some((url, authority)))) => (*url, authority.clone()),
                    // The provider's URL is invalid: already reported.
                    (None, Some(None)) => continue,
                    (None, None) => {
                        report.error(
                            endpoint_path.clone(),
                            format!("no target_base_url: set it on this endpoint or on provider `{provider_name}`"),
                        );
                        continue;
                    }
                };
                let mut findings = Vec::new();
                let adaptation = adapt::resolve(
                    &Sources {
                        provider: provider.adaptation(),
                        provider_path: &provider_path,
                        endpoint: endpoint.adaptation(),
                        endpoint_path: &endpoint_path,
                    },
                    path,
                    endpoint
                        .target_path
                        .as_deref()
                        .map(|target| (target, field("target_path"))),
                    api_key.as_ref(),
                    env,
                    &mut findings,
                );
                report.findings(findings);
                let Some(adaptation) = adaptation else {
                    continue;
                };
                let mut url = join_url(base_url, &adaptation.upstream_path);
                if let Some(query) = &adaptation.query {
                    url = format!("{url}?{query}");
                }
                let upstream_image_format = match endpoint.upstream_image_format.as_deref() {
                    // The demo's own image URLs point at its loopback address: llmux serves them.
                    None if builtin_demo => UpstreamImageFormat::B64Json,
                    None | Some("url") => UpstreamImageFormat::AsRequested,
                    Some("b64_json") => UpstreamImageFormat::B64Json,
                    Some(other) => {
                        report.error(
                            field("upstream_image_format"),
                            format!("`{other}` is not an upstream_image_format: use `b64_json` or `url`"),
                        );
                        continue;
                    }
                };
                let upstream_uri: Uri = match url.parse() {
                    Ok(uri) => uri,
                    Err(error) => {
                        report.error(
                            field("path"),
                            format!("`{url}` is not a valid URL: {error}"),
                        );
                        continue;
                    }
                };
                // fast-openai-api-proxy probes `{target_base_url}/health`; `null` turns probing off.
                let health_uri = match endpoint
                    .health_path
                    .as_ref()
                    .or(provider.health_path.as_ref())
                {
                    Some(None) => None,
                    configured => {
                        let health_path = configured.and_then(Option::as_deref).unwrap_or("health");
                        let url = join_url(base_url, health_path);
                        match url.parse::<Uri>() {
                            Ok(uri) => Some(uri),
                            Err(error) => {
                                report.error(
                                    field("health_path"),
                                    format!("`{url}` is not a valid URL: {error}"),
                                );
                                continue;
                            }
                        }
                    }
                };
                let tls = match (&endpoint.tls, &provider_tls) {
                    (Some(tls), _) => match report.tls(file, tls, field("tls")) {
                        Some(settings) => Some(settings),
                        None => continue,
                    },
                    (None, Some(Some(settings))) => Some(Arc::clone(settings)),
                    // The provider's settings are broken: already reported.
                    (None, Some(None)) => continue,
                    (None, None) => None,
                };
                let identity =
                    identity_of(provider_name, &endpoint.target_model_name, &upstream_uri);
                let host_header = host_header_of(&upstream_uri);
                endpoints.push(Endpoint {
                    provider: Arc::clone(&provider_arc),
                    exposed_model: Arc::clone(&exposed),
                    path: path.into(),
                    target_model_name: endpoint.target_model_name.as_str().into(),
                    target_model_json: serde_json::Value::from(endpoint.target_model_name.as_str())
                        .to_string()
                        .into(),
                    base_url: base_url.trim_end_matches('/').into(),
                    upstream_uri,
                    upstream_host: authority.into(),
                    host_header,
                    request_timeout,
                    health_timeout,
                    key_variable: key_variable.clone(),
                    api_key: api_key.clone(),
                    authorization: adaptation.authorization,
                    file: Arc::clone(&file_arc),
                    auth_header: adaptation.auth_header,
                    headers: adaptation.headers,
                    upstream_path: adaptation.upstream_path,
                    query: adaptation.query,
                    drop_params: adaptation.drop_params,
                    json_object_fallback: adaptation.json_object_fallback,
                    float_embeddings_upstream: adaptation.float_embeddings_upstream,
                    model_field: adaptation.model_field,
                    health_uri,
                    weight,
                    max_retries,
                    breaker: Default::default(),
                    upstream_image_format,
                    tls,
                    log_pairs: std::sync::OnceLock::new(),
                    identity,
                });
            }
        }
    }
    report.finish(Some(endpoints))
}

/// The routes a provider's `families` and `passthrough` keys add, as the models of the routing
/// table that serve them (`@files` on `v1/files`, `@passthrough` on `v1`): the provider's own
/// URL, key and adaptation settings, never probed by health checks.
fn model_less_endpoints(
    provider: &ProviderSchema,
    provider_path: &[Segment],
    report: &mut Report<'_>,
) -> Vec<(String, Vec<Segment>, ModelSchema)> {
    let mut models = Vec::new();
    let endpoint = |path: &str, target: &str| ModelSchema {
        endpoints: vec![EndpointSchema {
            path: path.to_owned(),
            target_model_name: target.to_owned(),
            health_path: Some(None),
            ..EndpointSchema::default()
        }],
    };
    let mut at = provider_path.to_vec();
    at.push(Segment::Key(FAMILIES_KEY.into()));
    for (index, name) in provider.families.iter().flatten().enumerate() {
        let mut item = at.clone();
        item.push(Segment::Index(index));
        match Family::named(name) {
            Some(family) if !models.iter().any(|(m, _, _)| m == family.table_model()) => models
                .push((
                    family.table_model().to_owned(),
                    item,
                    endpoint(family.path(), family.name()),
                )),
            Some(_) => report.warn(item, format!("family `{name}` is listed twice")),
            None => {
                let known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
                report.error(
                    item,
                    format!(
                        "`{name}` is not a family llmux serves: use one of {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    if provider.passthrough == Some(true) {
        let mut path = provider_path.to_vec();
        path.push(Segment::Key("passthrough".into()));
        models.push((
            PASSTHROUGH_MODEL.to_owned(),
            path,
            endpoint(PASSTHROUGH_PATH, "passthrough"),
        ));
    }
    models
}

/// The base URL and authority of a `builtin:demo` endpoint: the demo server's address (from
/// [`DEMO_URL_VARIABLE`], which startup answers) with the endpoint's `demo` settings.
fn demo_base(
    provider: Option<&DemoSchema>,
    endpoint: Option<&DemoSchema>,
    env: EnvLookup<'_>,
) -> Result<(String, String), DemoProblem> {
    let settings = DemoSchema::merged(provider, endpoint).resolve()?;
    let demo_url = env(DEMO_URL_VARIABLE).unwrap_or_else(|| UNSTARTED_DEMO_URL.to_owned());
    let authority = demo_url
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    Ok((settings.upstream_base(&demo_url), authority))
}

struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    findings_seen: HashSet<(String, String)>,
}

impl Report<'_> {
    fn parse(&mut self, text: &str) -> Option<ConfigFile> {
        let mut unknown: Vec<Vec<Segment>> = Vec::new();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed: Result<ConfigFile, _> = {
            let mut on_unknown = |path: serde_ignored::Path<'_>| {
                let segments = segments_of(&path);
                // The access section is skipped here on purpose (crate::access::file reads it).
                if segments.first()
                    != Some(&Segment::Key(crate::access::file::ACCESS_SECTION.into()))
                {
                    unknown.push(segments);
                }
            };
            let ignoring = serde_ignored::Deserializer::new(&mut deserializer, &mut on_unknown);
            serde_path_to_error::deserialize(ignoring)
        };
        let parsed = match parsed {
            Ok(config) => deserializer
                .end()
                .map(|()| config)
                .map_err(|error| ("$".to_owned(), error)),
            Err(error) => {
                let path = segments_of_error(error.path());
                Err((display_path(&path), error.into_inner()))
            }
        };
        match parsed {
            Ok(config) => {
                for path in unknown {
                    let message = unknown_key_message(&path);
                    self.warn(path, message);
                }
                Some(config)
            }
            Err((json_path, inner)) => {
                let full = inner.to_string();
                let message = full
                    .rfind(" at line ")
                    .map_or(full.as_str(), |cut| &full[..cut])
                    .to_owned();
                let data_error = inner.classify() == serde_json::error::Category::Data;
                let first = Problem {
                    severity: Severity::Error,
                    file: self.file.to_path_buf(),
                    json_path,
                    position: Some(Position {
                        line: inner.line().max(1),
                        column: inner.column().max(1),
                    }),
                    message,
                };
                // serde stops at the first type error; the text is valid JSON, so the other
                // providers, models and endpoints are checked one by one for theirs.
                let others = if data_error {
                    every_type_error(text)
                } else {
                    Vec::new()
                };
                let first_path = first.json_path.clone();
                self.problems.push(first);
                for (path, message) in others {
                    if display_path(&path) != first_path {
                        self.error(path, message);
                    }
                }
                None
            }
        }
    }

    fn push(&mut self, severity: Severity, path: Vec<Segment>, message: String) {
        let position = locate(self.text, &path).or_else(|| Some(position_of(self.text, 0)));
        self.problems.push(Problem {
            severity,
            file: self.file.to_path_buf(),
            json_path: display_path(&path),
            position,
            message,
        });
    }

    fn warn(&mut self, path: Vec<Segment>, message: String) {
        self.push(Severity::Warning, path, message);
    }

    fn error(&mut self, path: Vec<Segment>, message: String) {
        self.push(Severity::Error, path, message);
    }

    /// A configured timeout in seconds: positive and at most [`MAX_TIMEOUT`].
    fn timeout(&mut self, seconds: Option<f64>, path: Vec<Segment>) -> Option<Duration> {
        let seconds = seconds?;
        match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if seconds > 0.0 && duration <= MAX_TIMEOUT => Some(duration),
            Ok(_) if seconds > 0.0 => {
                self.error(
                    path,
                    format!(
                        "a timeout must be at most {} seconds (one day), not {seconds}",
                        MAX_TIMEOUT.as_secs()
                    ),
                );
                None
            }
            _ => {
                self.error(
                    path,
                    format!("a timeout must be a positive number of seconds, not {seconds}"),
                );
                None
            }
        }
    }

    /// Reads the files of a `tls` object (paths relative to the config file's dir); each problem
    /// is an error at its key.
    fn tls(
        &mut self,
        file: &Path,
        tls: &TlsSchema,
        path: Vec<Segment>,
    ) -> Option<Arc<TlsSettings>> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let resolve = |name: &Option<String>| name.as_ref().map(|name| dir.join(name));
        let files = TlsFiles {
            ca_file: resolve(&tls.ca_file),
            use_system_roots: tls.use_system_roots,
            client_cert_file: resolve(&tls.client_cert_file),
            client_key_file: resolve(&tls.client_key_file),
        };
        match TlsSettings::read(&files) {
            Ok(settings) => Some(Arc::new(settings)),
            Err(problems) => {
                for problem in problems {
                    let mut at = path.clone();
                    at.push(Segment::Key(problem.key.to_owned()));
                    self.error(at, problem.message);
                }
                None
            }
        }
    }

    /// An endpoint's pool weight: a positive finite number, 1 when unset.
    fn weight(&mut self, weight: Option<f64>, path: Vec<Segment>) -> f64 {
        match weight {
            None => 1.0,
            Some(weight) if weight > 0.0 && weight.is_finite() => weight,
            Some(weight) => {
                self.error(
                    path,
                    format!("a weight must be a positive number, not {weight}"),
                );
                1.0
            }
        }
    }

    /// Validates a base URL: absolute http(s) with a host and no credentials. Returns its
    /// authority.
    fn base_url(&mut self, url: &str, path: Vec<Segment>) -> Option<String> {
        // The URL is shown in answers, /admin/config, metrics and logs: a password in it would
        // leak everywhere, so it is refused, and no message echoes it.
        let shown = redact_userinfo(url);
        if shown != url {
            self.error(
                path,
                format!("the URL `{shown}` carries credentials (user:password@): remove them and set the key with `api_key_variable` or a header with `headers`"),
            );
            return None;
        }
        let parsed: Result<Uri, _> = url.parse();
        match parsed {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty()) =>
            {
                if uri.query().is_some() {
                    self.error(path, format!("`{url}` must not have a query string"));
                    return None;
                }
                uri.authority().map(|a| a.to_string())
            }
            _ => {
                self.error(
                    path,
                    format!("`{url}` is not an absolute http:// or https:// URL"),
                );
                None
            }
        }
    }

    /// Records adaptation findings; a provider's setting shared by its endpoints is reported once.
    fn findings(&mut self, findings: Vec<Finding>) {
        for finding in findings {
            // A set, not a scan of the problems so far: a file of many endpoints stays linear.
            let key = (display_path(&finding.path), finding.message.clone());
            if self.findings_seen.insert(key) {
                self.push(finding.severity, finding.path, finding.message);
            }
        }
    }

    fn finish(self, endpoints: Option<Vec<Endpoint>>) -> FileLoad {
        let failed = self.problems.iter().any(|p| p.severity == Severity::Error);
        FileLoad {
            file: self.file.to_path_buf(),
            endpoints: if failed { None } else { endpoints },
            problems: self.problems,
        }
    }
}

/// Every type error of a file that is valid JSON: each provider, model and endpoint is
/// deserialized on its own (its children stubbed out), so one bad value does not hide the next.
/// Paths are absolute; the caller finds their positions.
fn every_type_error(text: &str) -> Vec<(Vec<Segment>, String)> {
    let mut errors = Vec::new();
    let Ok(serde_json::Value::Object(providers)) = serde_json::from_str(text) else {
        return errors;
    };
    for (provider_name, mut provider) in providers {
        let provider_path = vec![Segment::Key(provider_name)];
        let models = take_child(
            &mut provider,
            "models",
            serde_json::Value::Object(Default::default()),
        );
        check_value::<ProviderSchema>(provider, &provider_path, &mut errors);
        let Some(serde_json::Value::Object(models)) = models else {
            continue;
        };
        for (model_key, mut model) in models {
            let mut model_path = provider_path.clone();
            model_path.extend([Segment::Key("models".into()), Segment::Key(model_key)]);
            let endpoints = take_child(
                &mut model,
                "endpoints",
                serde_json::Value::Array(Vec::new()),
            );
            check_value::<ModelSchema>(model, &model_path, &mut errors);
            let Some(serde_json::Value::Array(endpoints)) = endpoints else {
                continue;
            };
            for (index, endpoint) in endpoints.into_iter().enumerate() {
                let mut endpoint_path = model_path.clone();
                endpoint_path.extend([Segment::Key("endpoints".into()), Segment::Index(index)]);
                check_value::<EndpointSchema>(endpoint, &endpoint_path, &mut errors);
            }
        }
    }
    errors
}

/// Takes `object[key]` out, leaving `stub` in its place, when it has the stub's JSON type (an
/// object's `models`, an array's `endpoints`); a value of another type stays for its error.
fn take_child(
    object: &mut serde_json::Value,
    key: &str,
    stub: serde_json::Value,
) -> Option<serde_json::Value> {
    let slot = object.as_object_mut()?.get_mut(key)?;
    let same_type = std::mem::discriminant(slot) == std::mem::discriminant(&stub);
    same_type.then(|| std::mem::replace(slot, stub))
}

fn check_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    base: &[Segment],
    errors: &mut Vec<(Vec<Segment>, String)>,
) {
    if let Err(error) = serde_path_to_error::deserialize::<_, T>(value) {
        let mut path = base.to_vec();
        path.extend(segments_of_error(error.path()));
        errors.push((path, error.into_inner().to_string()));
    }
}

fn segments_of_error(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .map_while(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// `https://user:secret@host/x` -> `https://***@host/x`: the URL with any userinfo of its
/// authority (before the first `/`, `?` or `#` after the scheme) replaced.
pub fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..authority_start], &rest[at..]).into(),
        None => url.into(),
    }
}

pub(crate) fn segments_of(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut current = path;
    loop {
        match current {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Segment::Index(*index));
                current = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(Segment::Key(key.clone()));
                current = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => current = parent,
        }
    }
    out.reverse();
    out
}

/// "unknown key `target_modle_name` (did you mean `target_model_name`?)"
fn unknown_key_message(path: &[Segment]) -> String {
    let Some(Segment::Key(key)) = path.last() else {
        return "unknown entry (ignored)".into();
    };
    let known: &[&str] = match path.len() {
        2 => PROVIDER_KEYS,
        4 => MODEL_KEYS,
        6 => ENDPOINT_KEYS,
        _ => &[],
    };
    unknown_key_hint(key, known)
}

/// "unknown key `x` is ignored", with the nearest of `known` when one is close (also used by the
/// key files' `llmux_access` section).
pub(crate) fn unknown_key_hint(key: &str, known: &[&str]) -> String {
    let suggestion = known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= 3)
        .min();
    match suggestion {
        Some((_, candidate)) => {
            format!("unknown key `{key}` is ignored (did you mean `{candidate}`?)")
        }
        None => format!("unknown key `{key}` is ignored"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET_KEY").then(|| "sk-test".to_owned())
    }

    fn load(text: &str) -> FileLoad {
        parse_file(Path::new("test.json"), text, &env)
    }

    /// The example of fast-openai-api-proxy's README, comments removed: must load unchanged.
    const SEED_EXAMPLE: &str = r#"{
  "openAI": {
    "api_key_variable": "OPENAI_API_TOKEN",
    "prefix": "openai-",
    "target_base_url": "https://api.openai.com",
    "request_timeout": 120,
    "health_timeout": 15,
    "models": {
      "gpt-4o": {
        "endpoints": [
          { "path": "v1/chat/completions", "target_model_name": "gpt-4o" },
          { "path": "v1/embeddings", "target_model_name": "text-embedding-ada-002", "request_timeout": 60 }
        ]
      },
      "dall-e-3": { "endpoints": [ { "path": "v1/images/generations", "target_model_name": "dall-e-3" } ] }
    }
  },
  "azureOpenAI": {
    "api_key_variable": "AZURE_OPENAI_KEY",
    "prefix": "azure-",
    "models": {
      "gpt-35-turbo": {
        "endpoints": [
          {
            "path": "v1/chat/completions",
            "target_base_url": "https://YOUR_AZURE_RESOURCE.openai.azure.com/openai/deployments/YOUR_DEPLOYMENT_NAME",
            "target_model_name": "gpt-35-turbo",
            "request_timeout": 180
          }
        ]
      }
    }
  }
}"#;

    #[test]
    fn families_and_passthrough_become_reserved_routes_with_the_provider_settings() {
        let loaded = load(
            r#"{"openai": {"api_key_variable": "SET_KEY", "target_base_url": "https://api.openai.com",
                "families": ["files", "batches", "files"], "passthrough": true}}"#,
        );
        let endpoints = loaded.endpoints.as_ref().unwrap();
        let routes: Vec<(&str, &str, &str)> = endpoints
            .iter()
            .map(|e| (&*e.exposed_model, &*e.path, &*e.provider))
            .collect();
        assert_eq!(
            routes,
            [
                ("@files", "v1/files", "openai"),
                ("@batches", "v1/batches", "openai"),
                ("@passthrough", "v1", "openai"),
            ]
        );
        assert!(endpoints.iter().all(|e| e.authorization.is_some()));
        assert!(endpoints.iter().all(|e| e.health_uri.is_none()));
        assert_eq!(
            endpoints[0]
                .uri_for("v1/files/file-1/content")
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/files/file-1/content"
        );
        let messages: Vec<String> = loaded
            .problems
            .iter()
            .map(|p| format!("{} {}", p.json_path, p.message))
            .collect();
        assert!(
            messages.iter().any(|m| m.contains("listed twice")),
            "{messages:?}"
        );
        // A provider serving only families declares no models and is not warned about it.
        assert!(
            !messages.iter().any(|m| m.contains("declares no models")),
            "{messages:?}"
        );
        // An unknown family is an error naming the known ones, at its place in the file.
        let broken = load(r#"{"p": {"target_base_url": "http://h", "families": ["filez"]}}"#);
        let error = broken.errors().next().expect("an error");
        assert!(error.json_path.contains("families"), "{}", error.json_path);
        assert!(
            error.message.contains("`filez` is not a family"),
            "{}",
            error.message
        );
        assert!(error.message.contains("vector_stores"), "{}", error.message);
    }

    #[test]
    fn the_seed_example_loads_unchanged_with_inherited_settings() {
        let loaded = load(SEED_EXAMPLE);
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.problems);
        let endpoints = loaded.endpoints.unwrap();
        assert_eq!(endpoints.len(), 4);
        let chat = &endpoints[0];
        assert_eq!(&*chat.exposed_model, "openai-gpt-4o");
        assert_eq!(
            chat.upstream_uri.to_string(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(chat.request_timeout, Duration::from_secs(120));
        assert_eq!(chat.health_timeout, Duration::from_secs(15));
        assert_eq!(endpoints[1].request_timeout, Duration::from_secs(60));
        let azure = &endpoints[3];
        assert_eq!(&*azure.exposed_model, "azure-gpt-35-turbo");
        assert_eq!(azure.request_timeout, Duration::from_secs(180));
        assert_eq!(azure.health_timeout, DEFAULT_TIMEOUT);
        assert!(azure
            .upstream_uri
            .to_string()
            .ends_with("YOUR_DEPLOYMENT_NAME/v1/chat/completions"));
        // Both key variables are unset here: a warning each, no key.
        let warnings: Vec<_> = loaded.problems.iter().map(|p| p.message.clone()).collect();
        assert!(warnings.iter().any(|m| m.contains("OPENAI_API_TOKEN")));
        assert!(chat.authorization.is_none());
    }

    fn check_error(text: &str, json_path: &str, line: usize, needle: &str) {
        let loaded = load(text);
        assert!(loaded.endpoints.is_none(), "file should fail: {text}");
        let error = loaded.errors().next().unwrap();
        assert_eq!(error.json_path, json_path, "{error}");
        assert_eq!(error.position.map(|p| p.line), Some(line), "{error}");
        assert!(error.message.contains(needle), "{error}");
    }

    #[test]
    fn errors_name_the_json_path_and_line() {
        check_error(
            "{\n \"p\": {\n  \"models\": 3 }}",
            "p.models",
            3,
            "invalid type",
        );
        check_error("{\"p\": {", "p", 1, "EOF");
        check_error(
            "{\"p\": {\"target_base_url\": \"http://h\",\n \"models\": {\"m\": {\"endpoints\": [\n {\"path\": \"v1/x\"}]}}}}",
            "p.models.m.endpoints[0]",
            3,
            "target_model_name",
        );
        check_error(
            "{\"p\": {\"target_base_url\": \"localhost:8000\",\n \"models\": {\"m\": {\"endpoints\": [{\"path\": \"v1/x\", \"target_model_name\": \"t\"}]}}}}",
            "p.target_base_url",
            1,
            "absolute",
        );
        check_error(
            "{\"p\": {\"target_base_url\": \"http://h\", \"request_timeout\": 0,\n \"models\": {}}}",
            "p.request_timeout",
            1,
            "positive",
        );
        check_error(
            "{\"p\": {\"models\": {\"m\": {\"endpoints\": [{\"path\": \"v1/x\", \"target_model_name\": \"t\"}]}}}}",
            "p.models.m.endpoints[0]",
            1,
            "no target_base_url",
        );
        check_error(
            "{\"p\": {\"target_base_url\": \"http://h\", \"models\": {\"m\": {\"endpoints\": [\n{\"path\": \"v1/x\", \"target_model_name\": \"t\",\n \"weight\": 0}]}}}}",
            "p.models.m.endpoints[0].weight",
            3,
            "positive",
        );
        check_error(
            "{\"p\": {\"target_base_url\": \"http://h\", \"max_retries\": -1,\n \"models\": {}}}",
            "p.max_retries",
            1,
            "invalid value",
        );
        check_error("[1]", "$", 1, "invalid type");
        check_error("{} {}", "$", 1, "trailing");
    }

    #[test]
    fn weight_and_max_retries_default_and_the_endpoint_wins() {
        let loaded = load(
            "{\"p\": {\"target_base_url\": \"http://h\", \"max_retries\": 4, \"models\": {\"m\": {\"endpoints\": [\n{\"path\": \"v1/x\", \"target_model_name\": \"t\"},\n{\"path\": \"v1/x\", \"target_model_name\": \"t\", \"weight\": 2.5, \"max_retries\": 0}]}}},\n\"q\": {\"target_base_url\": \"http://h\", \"models\": {\"m\": {\"endpoints\": [{\"path\": \"v1/x\", \"target_model_name\": \"t\"}]}}}}",
        );
        let endpoints = loaded.endpoints.unwrap();
        let settings: Vec<(f64, u32)> = endpoints
            .iter()
            .map(|e| (e.weight, e.max_retries))
            .collect();
        assert_eq!(
            settings,
            vec![(1.0, 4), (2.5, 0), (1.0, DEFAULT_MAX_RETRIES)]
        );
    }

    #[test]
    fn unknown_keys_warn_with_a_suggestion_and_do_not_fail_the_file() {
        let loaded = load(
            "{\"p\": {\"target_base_url\": \"http://h\", \"api_key_variable\": \"SET_KEY\",\n \"models\": {\"m\": {\"endpoints\": [\n{\"path\": \"/v1/x/\", \"target_model_name\": \"t\", \"target_modle_nam\": 1}]}}}}",
        );
        let endpoints = loaded.endpoints.as_ref().unwrap();
        assert_eq!(&*endpoints[0].path, "v1/x");
        assert!(endpoints[0].authorization.is_some());
        let warning = &loaded.problems[0];
        assert_eq!(warning.severity, Severity::Warning);
        assert!(
            warning.message.contains("did you mean `target_model_name`"),
            "{warning}"
        );
        assert_eq!(warning.position.map(|p| p.line), Some(3));
        assert!(!format!("{:?}", loaded.endpoints).contains("sk-test"));
    }

    #[test]
    fn health_path_defaults_to_health_is_inherited_and_null_turns_probing_off() {
        let loaded = load(
            r#"{"p": {"target_base_url": "http://h:1/base/", "health_path": "v1/models", "models": {
                "inherits": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]},
                "own": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t", "health_path": "/ping"}]},
                "off": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t", "health_path": null}]}}},
              "q": {"target_base_url": "http://h:2", "models": {
                "default": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}}},
              "r": {"target_base_url": "http://h:3", "health_path": null, "models": {
                "unchecked": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"},
                    {"path": "v1/embeddings", "target_model_name": "t", "health_path": "health"}]}}}}"#,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let uris: Vec<Option<String>> = loaded
            .endpoints
            .unwrap()
            .iter()
            .map(|e| e.health_uri.as_ref().map(|u| u.to_string()))
            .collect();
        assert_eq!(
            uris,
            [
                Some("http://h:1/base/v1/models".to_owned()),
                Some("http://h:1/base/ping".to_owned()),
                None,
                Some("http://h:2/health".to_owned()),
                None,
                Some("http://h:3/health".to_owned()),
            ]
        );
    }

    fn one_endpoint(provider_extra: &str, endpoint_extra: &str) -> String {
        format!(
            "{{\"p\": {{\"target_base_url\": \"http://h\"{provider_extra},\n \"models\": {{\"m\": {{\"endpoints\": [\n{{\"path\": \"v1/x\", \"target_model_name\": \"t\"{endpoint_extra}}}]}}}}}}}}"
        )
    }

    #[test]
    fn a_timeout_past_one_day_is_a_config_error_with_its_position() {
        // Issue 20: `request_timeout: 1e19` loaded, then panicked a worker on `Instant + Duration`.
        check_error(
            &one_endpoint("", ", \"request_timeout\": 1e19"),
            "p.models.m.endpoints[0].request_timeout",
            3,
            "at most 86400 seconds",
        );
        check_error(
            &one_endpoint(", \"health_timeout\": 86401", ""),
            "p.health_timeout",
            1,
            "at most 86400 seconds",
        );
        let loaded = load(&one_endpoint(", \"request_timeout\": 86400", ""));
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.problems);
    }

    #[test]
    fn credentials_in_a_base_url_are_refused_without_echoing_them() {
        // Issue 20: `https://user:secret@host` leaked into headers, /admin/config, metrics, logs.
        for (text, json_path) in [
            (
                one_endpoint("", "").replace("http://h", "https://user:hunter2@h"),
                "p.target_base_url",
            ),
            (
                one_endpoint("", ", \"target_base_url\": \"http://hunter2@h:8/v1\""),
                "p.models.m.endpoints[0].target_base_url",
            ),
        ] {
            let loaded = load(&text);
            assert!(loaded.endpoints.is_none(), "{text}");
            let error = loaded
                .errors()
                .find(|e| e.json_path == json_path)
                .unwrap_or_else(|| panic!("no error at {json_path}: {:?}", loaded.problems));
            assert!(error.message.contains("api_key_variable"), "{error}");
            assert!(error.position.is_some());
            assert!(!format!("{:?}", loaded.problems).contains("hunter2"));
        }
        assert_eq!(
            redact_userinfo("https://u:p@h/a@b?c@d"),
            "https://***@h/a@b?c@d"
        );
        assert_eq!(redact_userinfo("http://h/a@b"), "http://h/a@b");
    }

    #[test]
    fn every_type_error_of_a_file_is_reported_with_its_position() {
        // Issue 20: `llmux check` stopped at the first type error of a file.
        let text = "{\"p\": {\"target_base_url\": \"http://h\", \"request_timeout\": \"slow\",\n \"models\": {\"m\": {\"endpoints\": [\n{\"path\": 1, \"target_model_name\": \"t\"},\n{\"path\": \"v1/x\", \"target_model_name\": \"t\", \"weight\": \"heavy\"}]},\n \"n\": {\"endpoints\": 3}}},\n \"q\": {\"max_retries\": -2, \"models\": {}}}";
        let loaded = load(text);
        let mut found: Vec<(String, Option<usize>)> = loaded
            .errors()
            .map(|e| (e.json_path.clone(), e.position.map(|p| p.line)))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("p.models.m.endpoints[0].path".to_owned(), Some(3)),
                ("p.models.m.endpoints[1].weight".to_owned(), Some(4)),
                ("p.models.n.endpoints".to_owned(), Some(5)),
                ("p.request_timeout".to_owned(), Some(1)),
                ("q.max_retries".to_owned(), Some(6)),
            ],
            "{:?}",
            loaded.problems
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Bytes a mutation may insert: JSON's punctuation and a few of its words' letters.
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', '"', ':', ',', ' ', '\n', '\\', '0', '1', '-', '.', 'e', 'n', 'u',
            'l', 't', 'r', 'f', 'a', 's', '@', '/', 'é',
        ];

        fn mutated() -> impl Strategy<Value = String> {
            let edits = prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    0..3u8,
                    prop::sample::select(ALPHABET),
                ),
                0..8,
            );
            edits.prop_map(|edits| {
                let mut chars: Vec<char> = SEED_EXAMPLE.chars().collect();
                for (at, kind, c) in edits {
                    let i = at.index(chars.len().max(1)).min(chars.len());
                    match kind {
                        0 => chars.insert(i, c),
                        1 if i < chars.len() => {
                            chars.remove(i);
                        }
                        _ if i < chars.len() => chars[i] = c,
                        _ => chars.push(c),
                    }
                }
                chars.into_iter().collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Issue 20: the loader never panics, and every problem points somewhere in the file.
            #[test]
            fn the_loader_never_panics_and_every_problem_has_a_position(text in mutated()) {
                let loaded = load(&text);
                let lines = text.lines().count().max(1);
                for problem in &loaded.problems {
                    let position = problem.position;
                    prop_assert!(position.is_some(), "{problem}");
                    let position = position.unwrap_or(Position { line: 0, column: 0 });
                    prop_assert!(position.line >= 1 && position.line <= lines + 1, "{problem}");
                    prop_assert!(position.column >= 1, "{problem}");
                }
                prop_assert_eq!(loaded.endpoints.is_some(), loaded.errors().next().is_none());
            }

            #[test]
            fn arbitrary_text_never_panics_the_loader(text in "\\PC{0,200}") {
                let loaded = load(&text);
                for problem in &loaded.problems {
                    prop_assert!(problem.position.is_some(), "{problem}");
                }
            }
        }
    }
}
