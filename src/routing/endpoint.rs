//! One upstream endpoint: where a (exposed model, path) goes, with its model name, timeouts and auth.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;

use crate::secret::ApiKey;

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
    pub request_timeout: Duration,
    pub health_timeout: Duration,
    /// The environment variable the key comes from, and the key when that variable is set.
    pub key_variable: Option<Box<str>>,
    pub api_key: Option<ApiKey>,
    /// `Bearer KEY`, marked sensitive, ready to send.
    pub authorization: Option<HeaderValue>,
    /// The file this endpoint comes from.
    pub file: Arc<Path>,
    /// How the upstream is asked for images (`upstream_image_format`).
    pub upstream_image_format: UpstreamImageFormat,
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
    /// The upstream URI for a path other than the endpoint's own, on the same base URL.
    pub fn uri_for(&self, path: &str) -> Result<Uri, actix_web::http::uri::InvalidUri> {
        format!("{}/{}", self.base_url, path.trim_start_matches('/')).parse()
    }
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
mod tests {
    use super::*;

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
