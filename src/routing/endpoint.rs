//! One upstream endpoint: where a (exposed model, path) goes, with its model name, timeouts and auth.
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Uri;

use super::breaker::Breaker;
use crate::secret::ApiKey;
use crate::telemetry::RenderedPairs;
use crate::upstream::tls::TlsSettings;

/// Further attempts after the first when neither the endpoint nor its provider sets `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// A resolved, validated endpoint. Built by `config::load`, never deserialized directly.
#[derive(Debug)]
pub struct Endpoint {
    /// Provider name as written in the file (the key of the provider object).
    pub provider: Arc<str>,
    /// The name clients use: the provider's prefix + the model key.
    pub exposed_model: Arc<str>,
    /// The OpenAI path, without a leading slash (`v1/chat/completions`).
    pub path: Box<str>,
    pub target_model_name: Box<str>,
    /// `target_model_name` encoded as a JSON string, spliced into request bodies as is.
    pub target_model_json: Box<str>,
    /// target_base_url without its trailing slash.
    pub base_url: Box<str>,
    /// base_url + "/" + path.
    pub upstream_uri: Uri,
    /// Host (and port) of the upstream, for logs.
    pub upstream_host: Box<str>,
    /// The `Host` header of requests to `upstream_uri`'s authority, as awc would write it
    /// (`host_header_of`), built once at load.
    pub host_header: Option<HeaderValue>,
    pub request_timeout: Duration,
    pub health_timeout: Duration,
    /// The environment variable the key comes from, and the key when that variable is set.
    pub key_variable: Option<Box<str>>,
    pub api_key: Option<ApiKey>,
    /// `Bearer KEY` (or `auth_scheme` KEY, or the bare key), marked sensitive, ready to send in
    /// `auth_header`. Send it with `apply_upstream_headers`.
    pub authorization: Option<HeaderValue>,
    /// The file this endpoint comes from.
    pub file: Arc<Path>,
    /// The header the key goes in: `Authorization` unless `auth_header` names another (`api-key`).
    pub auth_header: HeaderName,
    /// `headers` of the provider and the endpoint, `${VAR}`s expanded at load time.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// `target_path`, or `path` when unset: the upstream path, without a leading slash.
    pub upstream_path: Box<str>,
    /// `query`, encoded (`api-version=2024-10-21`); already part of `upstream_uri`.
    pub query: Option<Box<str>>,
    /// Top-level body keys removed before forwarding.
    pub drop_params: Box<[Box<str>]>,
    /// `response_format_fallback: "json_object"`: json_schema requests go up as json_object.
    pub json_object_fallback: bool,
    /// `upstream_embedding_format: "float"`: base64 embeddings are asked as float and encoded here.
    pub float_embeddings_upstream: bool,
    /// `model_field` (default true): whether the body's `model` is rewritten to the target name.
    pub model_field: bool,
    /// What GET /health/{model} probes: `None` when `health_path` is `null` (never probed).
    pub health_uri: Option<Uri>,
    /// Share of its pool's traffic, relative to the other members' (> 0).
    pub weight: f64,
    /// Further attempts after the first when a request through this endpoint fails retryably.
    pub max_retries: u32,
    /// Passive health: lives as long as the endpoint, so it survives other files' reloads.
    pub breaker: Breaker,
    /// `identity()`, built once at load: it goes out in every answer's `x-llmux-upstream`.
    pub identity: HeaderValue,
    /// How the upstream is asked for images (`upstream_image_format`).
    pub upstream_image_format: UpstreamImageFormat,
    /// The provider's (or the endpoint's own) `tls` settings; `None`: the default client.
    pub tls: Option<Arc<TlsSettings>>,
    /// Its `provider`, `target_model` and `upstream_host` pairs of the access line, rendered by
    /// the first line that names it (`pipeline::record`), then copied whole (issue 16).
    pub log_pairs: OnceLock<RenderedPairs>,
}

/// The `upstream_image_format` endpoint option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamImageFormat {
    /// The client's `response_format` goes upstream unchanged.
    #[default]
    AsRequested,
    /// The upstream is always asked for `b64_json`; llmux serves URLs from its image-data cache.
    B64Json,
}

impl Endpoint {
    /// Whether two endpoints come from the same configuration: every setting equal. Runtime state
    /// (the breaker) and what is derived from the settings are not compared. A reload that
    /// yields the same endpoint changes no route and keeps its breaker.
    pub fn same_config(&self, other: &Endpoint) -> bool {
        self.provider == other.provider
            && self.exposed_model == other.exposed_model
            && self.path == other.path
            && self.target_model_name == other.target_model_name
            && self.base_url == other.base_url
            && self.upstream_uri == other.upstream_uri
            && self.request_timeout == other.request_timeout
            && self.health_timeout == other.health_timeout
            && self.key_variable == other.key_variable
            && self.api_key == other.api_key
            && self.authorization == other.authorization
            && self.file == other.file
            && self.auth_header == other.auth_header
            && self.headers == other.headers
            && self.upstream_path == other.upstream_path
            && self.query == other.query
            && self.drop_params == other.drop_params
            && self.json_object_fallback == other.json_object_fallback
            && self.float_embeddings_upstream == other.float_embeddings_upstream
            && self.model_field == other.model_field
            && self.health_uri == other.health_uri
            && self.weight == other.weight
            && self.max_retries == other.max_retries
            && self.upstream_image_format == other.upstream_image_format
            && self.tls == other.tls
    }

    /// The upstream URI for a path other than the endpoint's own, on the same base URL. A path
    /// under the endpoint's own (`v1/responses/ID`) lands under its `target_path`.
    /// True while the circuit breaker keeps this endpoint out of its pool (for /health/{model}).
    pub fn is_ejected(&self) -> bool {
        self.breaker.is_ejected()
    }

    /// `provider/target_model@host:port`: names the endpoint in headers and logs without the
    /// URL's path, query or any credentials it may carry.
    pub fn identity(&self) -> &str {
        self.identity.to_str().unwrap_or("")
    }

    /// `provider/target_model`: `identity()` without the address, what clients may see in
    /// `x-llmux-upstream` (`--upstream-header name`).
    pub fn public_identity(&self) -> HeaderValue {
        let identity = self.identity.as_bytes();
        // The host never holds an `@` (credentials in URLs are refused at load).
        let end = memchr::memrchr(b'@', identity).unwrap_or(identity.len());
        HeaderValue::from_bytes(&identity[..end])
            .unwrap_or_else(|_| HeaderValue::from_static("upstream"))
    }

    /// The upstream URI for a path other than the endpoint's own, on the same base URL.
    pub fn uri_for(&self, path: &str) -> Result<Uri, actix_web::http::uri::InvalidUri> {
        self.uri_with_query(path, None)
    }

    /// `uri_for(path)` with the client's query string before the configured `query`.
    pub fn uri_with_query(
        &self,
        path: &str,
        client_query: Option<&str>,
    ) -> Result<Uri, actix_web::http::uri::InvalidUri> {
        let path = path.trim_start_matches('/');
        let mut url = match path.strip_prefix(&*self.path) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                format!("{}/{}{rest}", self.base_url, self.upstream_path)
            }
            _ => format!("{}/{path}", self.base_url),
        };
        let queries = client_query.filter(|q| !q.is_empty()).into_iter();
        for (index, query) in queries.chain(self.query.as_deref()).enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(query);
        }
        url.parse()
    }

    /// Puts the configured `headers` and the key (in `auth_header`) on an upstream request. The
    /// key goes last so no configured header can replace it.
    pub fn apply_upstream_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &*self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(authorization) = &self.authorization {
            headers.insert(self.auth_header.clone(), authorization.clone());
        }
    }
}

/// `provider/target_model@host:port` of an endpoint (see `Endpoint::identity`).
pub fn identity_of(provider: &str, target_model_name: &str, uri: &Uri) -> HeaderValue {
    let host = uri.host().unwrap_or("");
    let text = match uri.port_u16() {
        Some(port) => format!("{provider}/{target_model_name}@{host}:{port}"),
        None => format!("{provider}/{target_model_name}@{host}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("upstream"))
}

/// The `Host` header awc writes for `uri`: its host, and its port unless that is 80 or 443 (or
/// none).
pub fn host_header_of(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let value = match uri.port_u16() {
        None | Some(80) | Some(443) => HeaderValue::from_str(host),
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
    };
    value.ok()
}

/// Joins a base URL and an OpenAI path the way fast-openai-api-proxy does: one slash between.
pub fn join_url(base_url: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Normalizes a configured path: no leading or trailing slash.
pub fn normalize_path(path: &str) -> &str {
    path.trim_matches('/')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An endpoint of provider `p` at 127.0.0.1:1 with the given weight.
    pub(crate) fn endpoint_with_weight(weight: f64) -> Endpoint {
        let uri: Uri = "http://user:secret@127.0.0.1:1/v1/x".parse().unwrap();
        Endpoint {
            weight,
            base_url: "http://user:secret@127.0.0.1:1".into(),
            identity: identity_of("p", "t", &uri),
            upstream_uri: uri,
            ..endpoint("f.json", "m", "v1/x", "t")
        }
    }

    /// An endpoint of provider `p` at 127.0.0.1:1 for the routing tests.
    pub(crate) fn endpoint(file: &str, model: &str, path: &str, target: &str) -> Endpoint {
        Endpoint {
            provider: Arc::from("p"),
            exposed_model: Arc::from(model),
            path: path.into(),
            target_model_name: target.into(),
            target_model_json: format!("\"{target}\"").into(),
            base_url: "http://127.0.0.1:1".into(),
            upstream_uri: format!("http://127.0.0.1:1/{path}").parse().unwrap(),
            upstream_host: "127.0.0.1:1".into(),
            host_header: Some(HeaderValue::from_static("127.0.0.1:1")),
            request_timeout: Duration::from_secs(60),
            health_timeout: Duration::from_secs(60),
            key_variable: None,
            api_key: None,
            authorization: None,
            file: Arc::from(Path::new(file)),
            auth_header: actix_web::http::header::AUTHORIZATION,
            headers: Box::default(),
            upstream_path: path.into(),
            query: None,
            drop_params: Box::default(),
            json_object_fallback: false,
            float_embeddings_upstream: false,
            model_field: true,
            health_uri: None,
            weight: 1.0,
            max_retries: 2,
            breaker: Default::default(),
            upstream_image_format: Default::default(),
            tls: None,
            identity: actix_web::http::header::HeaderValue::from_static("p/t@127.0.0.1:1"),
            log_pairs: OnceLock::new(),
        }
    }

    #[test]
    fn host_headers_are_written_as_awc_writes_them() {
        // Issue 16: built once at load instead of by awc per request; the same value.
        for (uri, host) in [
            ("http://h/v1/x", "h"),
            ("http://h:80/v1/x", "h"),
            ("https://h:443/v1", "h"),
            ("https://api.example.com/v1?q=1", "api.example.com"),
            ("http://127.0.0.1:8080/v1/x", "127.0.0.1:8080"),
            ("https://h:8443", "h:8443"),
            ("http://[::1]:9/x", "[::1]:9"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(host_header_of(&uri).unwrap(), host, "{uri}");
        }
        assert_eq!(host_header_of(&"/v1/x".parse().unwrap()), None);
    }

    #[test]
    fn identity_names_provider_model_and_host_without_credentials() {
        assert_eq!(endpoint_with_weight(1.0).identity(), "p/t@127.0.0.1:1");
        assert_eq!(endpoint_with_weight(1.0).public_identity(), "p/t");
    }

    #[test]
    fn urls_join_with_exactly_one_slash() {
        for (base, path, expected) in [
            (
                "http://h:1",
                "v1/chat/completions",
                "http://h:1/v1/chat/completions",
            ),
            ("http://h:1/", "/v1/embeddings", "http://h:1/v1/embeddings"),
            ("https://h/openai//", "v1/x", "https://h/openai/v1/x"),
        ] {
            assert_eq!(join_url(base, path), expected);
        }
        assert_eq!(normalize_path("/v1/models/"), "v1/models");
    }
}
