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
    /// `b64_json`: the upstream only answers images as base64; llmux asks for that and serves
    /// URLs from its image-data cache to clients that want URLs.
    pub upstream_image_format: Option<String>,
}

/// Keys each level knows, for "did you mean" hints on unknown ones.
pub const PROVIDER_KEYS: &[&str] = &[
    "api_key_variable",
    "prefix",
    "target_base_url",
    "request_timeout",
    "health_timeout",
    "models",
];
pub const MODEL_KEYS: &[&str] = &["endpoints"];
pub const ENDPOINT_KEYS: &[&str] = &[
    "path",
    "target_model_name",
    "target_base_url",
    "request_timeout",
    "health_timeout",
    "upstream_image_format",
];
