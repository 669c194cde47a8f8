//! Config dir -> validated endpoints per file, plus every problem with file, JSON path and line:column.
//!
//! The server, the watcher and `llmux check` all load through here. Problems are values: a file
//! with any error contributes no endpoints (its callers keep its last good version), warnings never
//! stop a file.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;
use serde::Serialize;

use super::adapt::{self, Finding, Sources};
use super::locate::{display_path, locate, position_of, Position, Segment};
use super::schema::{ConfigFile, ENDPOINT_KEYS, MODEL_KEYS, PROVIDER_KEYS};
use crate::routing::endpoint::{
    identity_of, join_url, normalize_path, Endpoint, UpstreamImageFormat, DEFAULT_MAX_RETRIES,
};
use crate::secret::ApiKey;

/// Timeouts when neither the endpoint nor its provider sets one (fast-openai-api-proxy's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

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
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        // Follows symlinks, as ConfigMap mounts need.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every config file of `dir`. Fails only when the dir itself cannot be read.
pub fn load_dir(dir: &Path, env: EnvLookup<'_>) -> std::io::Result<Vec<FileLoad>> {
    Ok(config_files(dir)?
        .into_iter()
        .map(|file| load_file(&file, env))
        .collect())
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
        if provider.models.is_empty() {
            report.warn(
                provider_path.clone(),
                format!("provider `{provider_name}` declares no models"),
            );
        }
        let provider_base = provider.target_base_url.as_ref().map(|url| {
            report
                .base_url(url, at("target_base_url"))
                .map(|authority| (url, authority))
        });
        let prefix = provider.prefix.as_deref().unwrap_or("");
        for (model_key, model) in &provider.models {
            let model_path = {
                let mut path = at("models");
                path.push(Segment::Key(model_key.clone()));
                path
            };
            let exposed: Arc<str> = Arc::from(format!("{prefix}{model_key}"));
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
                let (base_url, authority) = match (&endpoint.target_base_url, &provider_base) {
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
                let identity =
                    identity_of(provider_name, &endpoint.target_model_name, &upstream_uri);
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
                    identity,
                });
            }
        }
    }
    report.finish(Some(endpoints))
}

struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
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
                let path: Vec<Segment> = error
                    .path()
                    .iter()
                    .map_while(|segment| match segment {
                        serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                        serde_path_to_error::Segment::Map { key } => {
                            Some(Segment::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Enum { variant } => {
                            Some(Segment::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
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
                self.problems.push(Problem {
                    severity: Severity::Error,
                    file: self.file.to_path_buf(),
                    json_path,
                    position: (inner.line() > 0).then(|| Position {
                        line: inner.line(),
                        column: inner.column().max(1),
                    }),
                    message,
                });
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

    /// A configured timeout in seconds: positive and finite.
    fn timeout(&mut self, seconds: Option<f64>, path: Vec<Segment>) -> Option<Duration> {
        let seconds = seconds?;
        match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if seconds > 0.0 => Some(duration),
            _ => {
                self.error(
                    path,
                    format!("a timeout must be a positive number of seconds, not {seconds}"),
                );
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

    /// Validates a base URL: absolute http(s) with a host. Returns its authority.
    fn base_url(&mut self, url: &str, path: Vec<Segment>) -> Option<String> {
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
            let json_path = display_path(&finding.path);
            let known = self
                .problems
                .iter()
                .any(|p| p.json_path == json_path && p.message == finding.message);
            if !known {
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

fn segments_of(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
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
}
