//! Serde types mirroring the config files, leniently: unknown keys are reported, not fatal,
//! so fast-openai-api-proxy's files load unchanged.
use indexmap::IndexMap;
use serde::Deserialize;

/// One config file: provider name -> provider, in file order.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ConfigFile(pub IndexMap<String, ProviderSchema>);

#[derive(Debug, Deserialize)]
pub struct ProviderSchema {
    pub api_key_variable: Option<String>,
    pub prefix: Option<String>,
    pub target_base_url: Option<String>,
    pub request_timeout: Option<f64>,
    pub health_timeout: Option<f64>,
    #[serde(default)]
    pub models: IndexMap<String, ModelSchema>,
    // Provider adaptation (config::adapt); an endpoint's own setting wins.
    pub headers: Option<IndexMap<String, String>>,
    pub query: Option<IndexMap<String, String>>,
    pub auth_header: Option<String>,
    pub auth_scheme: Option<String>,
    pub drop_params: Option<Vec<String>>,
    pub response_format_fallback: Option<String>,
    pub upstream_embedding_format: Option<String>,
    pub model_field: Option<bool>,
    /// Absent: probe `/health`; a string: probe that path; `null`: don't probe.
    #[serde(default, deserialize_with = "present")]
    pub health_path: Option<Option<String>>,
    pub max_retries: Option<u32>,
    /// Settings of a `builtin:demo` provider (src/demo); an endpoint's own keys win.
    pub demo: Option<crate::demo::settings::DemoSchema>,
}

#[derive(Debug, Deserialize)]
pub struct ModelSchema {
    pub endpoints: Vec<EndpointSchema>,
}

#[derive(Debug, Deserialize)]
pub struct EndpointSchema {
    pub path: String,
    pub target_model_name: String,
    pub target_base_url: Option<String>,
    pub request_timeout: Option<f64>,
    pub health_timeout: Option<f64>,
    /// The upstream path when it differs from `path` (Azure deployments, Ollama-style paths).
    pub target_path: Option<String>,
    // Provider adaptation (config::adapt), also on the provider; the endpoint's wins.
    pub headers: Option<IndexMap<String, String>>,
    pub query: Option<IndexMap<String, String>>,
    pub auth_header: Option<String>,
    pub auth_scheme: Option<String>,
    pub drop_params: Option<Vec<String>>,
    pub response_format_fallback: Option<String>,
    pub upstream_embedding_format: Option<String>,
    pub model_field: Option<bool>,
    /// Overrides the provider's `health_path`; `null` here turns probing off for this endpoint.
    #[serde(default, deserialize_with = "present")]
    pub health_path: Option<Option<String>>,
    pub weight: Option<f64>,
    pub max_retries: Option<u32>,
    /// `b64_json`: the upstream only answers images as base64; llmux asks for that and serves
    /// URLs from its image-data cache to clients that want URLs.
    pub upstream_image_format: Option<String>,
    /// Settings of a `builtin:demo` endpoint (src/demo), over its provider's.
    pub demo: Option<crate::demo::settings::DemoSchema>,
}

/// Tells a key set to `null` (`Some(None)`) from a missing key (`None`, through `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Keys each level knows, for "did you mean" hints on unknown ones.
pub const PROVIDER_KEYS: &[&str] = &[
    "api_key_variable",
    "prefix",
    "target_base_url",
    "request_timeout",
    "health_timeout",
    "models",
    "headers",
    "query",
    "auth_header",
    "auth_scheme",
    "drop_params",
    "response_format_fallback",
    "upstream_embedding_format",
    "model_field",
    "health_path",
    "max_retries",
    "demo",
];
pub const MODEL_KEYS: &[&str] = &["endpoints"];
pub const ENDPOINT_KEYS: &[&str] = &[
    "path",
    "target_model_name",
    "target_base_url",
    "request_timeout",
    "health_timeout",
    "target_path",
    "headers",
    "query",
    "auth_header",
    "auth_scheme",
    "drop_params",
    "response_format_fallback",
    "upstream_embedding_format",
    "model_field",
    "health_path",
    "weight",
    "max_retries",
    "upstream_image_format",
    "demo",
];

/// The adaptation settings of a provider or an endpoint, side by side for merging.
#[derive(Debug, Clone, Copy)]
pub struct AdaptationSchema<'a> {
    pub headers: Option<&'a IndexMap<String, String>>,
    pub query: Option<&'a IndexMap<String, String>>,
    pub auth_header: Option<&'a str>,
    pub auth_scheme: Option<&'a str>,
    pub drop_params: Option<&'a [String]>,
    pub response_format_fallback: Option<&'a str>,
    pub upstream_embedding_format: Option<&'a str>,
    pub model_field: Option<bool>,
}

macro_rules! adaptation_of {
    ($schema:ty) => {
        impl $schema {
            pub fn adaptation(&self) -> AdaptationSchema<'_> {
                AdaptationSchema {
                    headers: self.headers.as_ref(),
                    query: self.query.as_ref(),
                    auth_header: self.auth_header.as_deref(),
                    auth_scheme: self.auth_scheme.as_deref(),
                    drop_params: self.drop_params.as_deref(),
                    response_format_fallback: self.response_format_fallback.as_deref(),
                    upstream_embedding_format: self.upstream_embedding_format.as_deref(),
                    model_field: self.model_field,
                }
            }
        }
    };
}
adaptation_of!(ProviderSchema);
adaptation_of!(EndpointSchema);
