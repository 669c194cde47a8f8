//! llmux: one OpenAI-compatible URL in front of many model backends, routed by JSON config files.
pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod errors;
pub mod health;
pub mod healthcheck;
pub mod images;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod secret;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod store;
