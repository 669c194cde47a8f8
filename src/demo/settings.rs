//! The `demo` settings of a `builtin:demo` provider or endpoint: as written in the files, resolved,
//! and carried to the demo server inside the upstream URL (`/s/{settings}/v1/...`), so the demo
//! server keeps no per-endpoint state and a reload changes them like any other URL.
use std::fmt::Write;
use std::time::Duration;

use serde::Deserialize;

/// The `target_base_url` that names the demo backend built into llmux.
pub const BUILTIN_DEMO: &str = "builtin:demo";

/// The environment lookup through which the loader learns the running demo server's base URL
/// (`startup` answers it). Unset, as under `llmux check`, endpoints show [`UNSTARTED_DEMO_URL`].
pub const DEMO_URL_VARIABLE: &str = "LLMUX_DEMO_URL";

/// The base URL `builtin:demo` resolves to when no demo server runs (`llmux check`).
pub const UNSTARTED_DEMO_URL: &str = "http://builtin-demo";

/// Largest embedding a demo answers, as a guard against a typo asking for gigabytes.
pub const MAX_EMBEDDING_DIMENSIONS: usize = 8192;

/// Longest configurable delay: ten minutes.
const MAX_DELAY_MS: u64 = 600_000;

/// The `demo` object as written, on a provider or an endpoint (the endpoint's keys win).
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
pub struct DemoSchema {
    pub tokens_per_second: Option<f64>,
    pub time_to_first_token_ms: Option<u64>,
    pub embedding_dimensions: Option<usize>,
    pub error_rate: Option<f64>,
    pub rate_limit_rate: Option<f64>,
    pub retry_after: Option<u64>,
    pub latency_ms: Option<u64>,
}

/// How a demo endpoint behaves. The default answers at once, never fails, and embeds in 1536
/// dimensions (text-embedding-3-small's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoSettings {
    /// Pace of generated tokens; `None` sends them all at once.
    pub tokens_per_second: Option<f64>,
    /// Wait before the first token (and before a non-streamed answer's generation time).
    pub time_to_first_token: Duration,
    pub embedding_dimensions: usize,
    /// Share of requests answered `500 server_error`.
    pub error_rate: f64,
    /// Share of requests answered `429` with `Retry-After`.
    pub rate_limit_rate: f64,
    /// Seconds in the `Retry-After` of injected 429s.
    pub retry_after: u64,
    /// Wait before every answer's head, on top of generation time.
    pub latency: Duration,
}

/// A setting that cannot be used: the key under `demo` and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoProblem {
    pub key: &'static str,
    pub message: String,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            tokens_per_second: None,
            time_to_first_token: Duration::ZERO,
            embedding_dimensions: 1536,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after: 1,
            latency: Duration::ZERO,
        }
    }
}

impl DemoSchema {
    /// The endpoint's keys over the provider's.
    pub fn merged(provider: Option<&Self>, endpoint: Option<&Self>) -> Self {
        let provider = provider.copied().unwrap_or_default();
        let endpoint = endpoint.copied().unwrap_or_default();
        Self {
            tokens_per_second: endpoint.tokens_per_second.or(provider.tokens_per_second),
            time_to_first_token_ms: endpoint
                .time_to_first_token_ms
                .or(provider.time_to_first_token_ms),
            embedding_dimensions: endpoint
                .embedding_dimensions
                .or(provider.embedding_dimensions),
            error_rate: endpoint.error_rate.or(provider.error_rate),
            rate_limit_rate: endpoint.rate_limit_rate.or(provider.rate_limit_rate),
            retry_after: endpoint.retry_after.or(provider.retry_after),
            latency_ms: endpoint.latency_ms.or(provider.latency_ms),
        }
    }

    /// Whether this object sets `key` (to tell which object a problem comes from).
    pub fn sets(&self, key: &str) -> bool {
        match key {
            "tokens_per_second" => self.tokens_per_second.is_some(),
            "time_to_first_token_ms" => self.time_to_first_token_ms.is_some(),
            "embedding_dimensions" => self.embedding_dimensions.is_some(),
            "error_rate" => self.error_rate.is_some(),
            "rate_limit_rate" => self.rate_limit_rate.is_some(),
            "retry_after" => self.retry_after.is_some(),
            "latency_ms" => self.latency_ms.is_some(),
            _ => false,
        }
    }

    /// Validates every key; the first problem found is returned.
    pub fn resolve(&self) -> Result<DemoSettings, DemoProblem> {
        let defaults = DemoSettings::default();
        let problem = |key: &'static str, message: &str| DemoProblem {
            key,
            message: message.to_owned(),
        };
        if let Some(rate) = self.tokens_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(problem(
                    "tokens_per_second",
                    "tokens_per_second must be a number above 0 (leave it out to send tokens unpaced)",
                ));
            }
        }
        for (key, value) in [
            ("time_to_first_token_ms", self.time_to_first_token_ms),
            ("latency_ms", self.latency_ms),
        ] {
            if value.is_some_and(|ms| ms > MAX_DELAY_MS) {
                return Err(problem(key, "a demo delay is at most 600000 ms"));
            }
        }
        let embedding_dimensions = self
            .embedding_dimensions
            .unwrap_or(defaults.embedding_dimensions);
        if !(1..=MAX_EMBEDDING_DIMENSIONS).contains(&embedding_dimensions) {
            return Err(problem(
                "embedding_dimensions",
                "embedding_dimensions must be between 1 and 8192",
            ));
        }
        for (key, value) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
        ] {
            if value.is_some_and(|rate| !(0.0..=1.0).contains(&rate)) {
                return Err(problem(key, "a rate is a share of requests, from 0 to 1"));
            }
        }
        let error_rate = self.error_rate.unwrap_or(0.0);
        let rate_limit_rate = self.rate_limit_rate.unwrap_or(0.0);
        if error_rate + rate_limit_rate > 1.0 {
            return Err(problem(
                "rate_limit_rate",
                "error_rate and rate_limit_rate together are at most 1",
            ));
        }
        Ok(DemoSettings {
            tokens_per_second: self.tokens_per_second,
            time_to_first_token: Duration::from_millis(self.time_to_first_token_ms.unwrap_or(0)),
            embedding_dimensions,
            error_rate,
            rate_limit_rate,
            retry_after: self.retry_after.unwrap_or(defaults.retry_after),
            latency: Duration::from_millis(self.latency_ms.unwrap_or(0)),
        })
    }
}

impl DemoSettings {
    /// The base URL of an endpoint with these settings on the demo server at `demo_url`: the
    /// server's own for the defaults, `{demo_url}/s/{settings}` otherwise.
    pub fn upstream_base(&self, demo_url: &str) -> String {
        let segment = self.to_segment();
        if segment.is_empty() {
            demo_url.trim_end_matches('/').to_owned()
        } else {
            format!("{}/s/{segment}", demo_url.trim_end_matches('/'))
        }
    }

    /// `tokens_per_second=20&latency_ms=5`: the settings that differ from the defaults, readable
    /// in `/admin/config` and `llmux check`.
    pub fn to_segment(&self) -> String {
        let defaults = Self::default();
        let mut out = String::new();
        let mut push = |key: &str, value: &dyn std::fmt::Display| {
            if !out.is_empty() {
                out.push('&');
            }
            let _ = write!(out, "{key}={value}");
        };
        if let Some(rate) = self.tokens_per_second {
            push("tokens_per_second", &rate);
        }
        if self.time_to_first_token != defaults.time_to_first_token {
            push(
                "time_to_first_token_ms",
                &self.time_to_first_token.as_millis(),
            );
        }
        if self.embedding_dimensions != defaults.embedding_dimensions {
            push("embedding_dimensions", &self.embedding_dimensions);
        }
        if self.error_rate != defaults.error_rate {
            push("error_rate", &self.error_rate);
        }
        if self.rate_limit_rate != defaults.rate_limit_rate {
            push("rate_limit_rate", &self.rate_limit_rate);
        }
        if self.retry_after != defaults.retry_after {
            push("retry_after", &self.retry_after);
        }
        if self.latency != defaults.latency {
            push("latency_ms", &self.latency.as_millis());
        }
        out
    }

    /// Reads [`DemoSettings::to_segment`]'s text back. Keys it does not know or cannot read keep
    /// their defaults: the segment comes from llmux's own loader, which validated it.
    pub fn from_segment(segment: &str) -> Self {
        let mut schema = DemoSchema::default();
        for pair in segment.split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            match key {
                "tokens_per_second" => schema.tokens_per_second = value.parse().ok(),
                "time_to_first_token_ms" => schema.time_to_first_token_ms = value.parse().ok(),
                "embedding_dimensions" => schema.embedding_dimensions = value.parse().ok(),
                "error_rate" => schema.error_rate = value.parse().ok(),
                "rate_limit_rate" => schema.rate_limit_rate = value.parse().ok(),
                "retry_after" => schema.retry_after = value.parse().ok(),
                "latency_ms" => schema.latency_ms = value.parse().ok(),
                _ => {}
            }
        }
        schema.resolve().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: DemoSchema, expected_segment: &str) {
        let settings = schema.resolve().unwrap();
        assert_eq!(settings.to_segment(), expected_segment);
        assert_eq!(DemoSettings::from_segment(expected_segment), settings);
    }

    #[test]
    fn settings_travel_in_the_url_and_read_back_unchanged() {
        check(DemoSchema::default(), "");
        check(
            DemoSchema {
                tokens_per_second: Some(12.5),
                time_to_first_token_ms: Some(300),
                ..Default::default()
            },
            "tokens_per_second=12.5&time_to_first_token_ms=300",
        );
        check(
            DemoSchema {
                embedding_dimensions: Some(8),
                error_rate: Some(0.25),
                rate_limit_rate: Some(0.5),
                retry_after: Some(3),
                latency_ms: Some(7),
                ..Default::default()
            },
            "embedding_dimensions=8&error_rate=0.25&rate_limit_rate=0.5&retry_after=3&latency_ms=7",
        );
    }

    #[test]
    fn the_endpoint_wins_key_by_key() {
        let provider = DemoSchema {
            tokens_per_second: Some(10.0),
            latency_ms: Some(5),
            ..Default::default()
        };
        let endpoint = DemoSchema {
            tokens_per_second: Some(99.0),
            ..Default::default()
        };
        let merged = DemoSchema::merged(Some(&provider), Some(&endpoint));
        assert_eq!(merged.tokens_per_second, Some(99.0));
        assert_eq!(merged.latency_ms, Some(5));
    }

    #[test]
    fn unusable_values_name_their_key() {
        let cases = [
            (
                DemoSchema {
                    tokens_per_second: Some(0.0),
                    ..Default::default()
                },
                "tokens_per_second",
            ),
            (
                DemoSchema {
                    error_rate: Some(1.5),
                    ..Default::default()
                },
                "error_rate",
            ),
            (
                DemoSchema {
                    error_rate: Some(0.6),
                    rate_limit_rate: Some(0.6),
                    ..Default::default()
                },
                "rate_limit_rate",
            ),
            (
                DemoSchema {
                    embedding_dimensions: Some(0),
                    ..Default::default()
                },
                "embedding_dimensions",
            ),
            (
                DemoSchema {
                    latency_ms: Some(600_001),
                    ..Default::default()
                },
                "latency_ms",
            ),
        ];
        for (schema, key) in cases {
            assert_eq!(schema.resolve().unwrap_err().key, key, "{schema:?}");
        }
    }
}
