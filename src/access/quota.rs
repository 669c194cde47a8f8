//! Quota policies (a limit for a path and model pattern, per owner or global) and per-owner
//! overrides (exempt, or their own limit, between optional start and end times), as
//! fast-openai-api-proxy has them.
use std::sync::Arc;

use super::key::{KeySource, Patterns};
use super::limits::Window;

/// A limit for every request whose path and model match, per owner or shared by all.
#[derive(Debug, Clone)]
pub struct Policy {
    /// As written in the file, normalised (`/v1/chat/completions`); may be a glob.
    pub api_path: Arc<str>,
    /// As written in the file; a glob.
    pub model: Arc<str>,
    pub window: Window,
    pub request_limit: Option<u64>,
    pub token_limit: Option<u64>,
    /// `enforce_per_user`: one counter per owner (default); otherwise one shared counter.
    pub per_owner: bool,
    pub source: KeySource,
    /// Names the policy's counters: `policy:{api_path}:{model}:{window}`.
    pub id: Arc<str>,
    path_pattern: Patterns,
    model_pattern: Patterns,
}

/// An owner's exception to the policies of one (path, model): exempt, or its own limit.
#[derive(Debug, Clone)]
pub struct Override {
    pub api_path: Arc<str>,
    pub model: Arc<str>,
    pub owner: Arc<str>,
    pub window: Window,
    pub request_limit: Option<u64>,
    pub token_limit: Option<u64>,
    pub exempt: bool,
    /// Seconds since the epoch; `None` is open.
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub source: KeySource,
    /// Names the override's counters: `override:{api_path}:{model}:{owner}:{window}`.
    pub id: Arc<str>,
}

impl Policy {
    pub fn new(
        api_path: &str,
        model: &str,
        window: Window,
        request_limit: Option<u64>,
        token_limit: Option<u64>,
        per_owner: bool,
        source: KeySource,
    ) -> Self {
        Self {
            api_path: api_path.into(),
            model: model.into(),
            window,
            request_limit,
            token_limit,
            per_owner,
            source,
            id: format!("policy:{api_path}:{model}:{}", window.name()).into(),
            path_pattern: Patterns::new([api_path]),
            model_pattern: Patterns::new([model]),
        }
    }

    /// Whether the policy applies to a request on `path` (normalised) for `model`. A request
    /// without a model matches policies whose model pattern is `*`.
    pub fn applies(&self, path: &str, model: Option<&str>) -> bool {
        self.path_pattern.matches(path) && self.model_pattern.matches(model.unwrap_or(""))
    }

    /// Policies and overrides are paired by their (path, model) exactly as written.
    pub fn same_target(&self, api_path: &str, model: &str) -> bool {
        &*self.api_path == api_path && &*self.model == model
    }
}

impl Override {
    /// `active` between `starts_at` (included) and `ends_at` (excluded).
    pub fn is_active(&self, now_seconds: i64) -> bool {
        self.starts_at.is_none_or(|start| now_seconds >= start)
            && self.ends_at.is_none_or(|end| now_seconds < end)
    }

    /// fast-openai-api-proxy's `window_state`: `scheduled`, `active` or `expired`.
    pub fn window_state(&self, now_seconds: i64) -> &'static str {
        if self.starts_at.is_some_and(|start| now_seconds < start) {
            "scheduled"
        } else if self.ends_at.is_some_and(|end| now_seconds >= end) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Normalises a policy path as fast-openai-api-proxy does: a leading `/`, no trailing `/`.
pub fn normalize_api_path(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    format!("/{trimmed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(path: &str, model: &str) -> Policy {
        Policy::new(
            path,
            model,
            Window::Minute,
            Some(1),
            None,
            true,
            KeySource::Named("test".into()),
        )
    }

    #[test]
    fn policies_match_path_and_model_globs() {
        let check = |policy: &Policy, path: &str, model: Option<&str>, expected: bool| {
            assert_eq!(policy.applies(path, model), expected, "{path} {model:?}");
        };
        let chat = policy("/v1/chat/completions", "gpt-*");
        check(&chat, "/v1/chat/completions", Some("gpt-4o"), true);
        check(&chat, "/v1/chat/completions", Some("llama"), false);
        check(&chat, "/v1/embeddings", Some("gpt-4o"), false);
        check(&chat, "/v1/chat/completions", None, false);
        let everything = policy("/v1/*", "*");
        check(
            &everything,
            "/v1/audio/transcriptions",
            Some("whisper"),
            true,
        );
        check(&everything, "/v1/models", None, true);
        assert_eq!(&*chat.id, "policy:/v1/chat/completions:gpt-*:minute");
    }

    #[test]
    fn paths_are_normalised_like_fast_openai_api_proxy() {
        assert_eq!(
            normalize_api_path("v1/chat/completions/"),
            "/v1/chat/completions"
        );
        assert_eq!(normalize_api_path("/v1/x"), "/v1/x");
    }

    #[test]
    fn override_windows_are_scheduled_active_then_expired() {
        let at = |starts_at, ends_at| Override {
            api_path: "/v1/x".into(),
            model: "*".into(),
            owner: "alice".into(),
            window: Window::Minute,
            request_limit: Some(1),
            token_limit: None,
            exempt: false,
            starts_at,
            ends_at,
            source: KeySource::Named("test".into()),
            id: "o".into(),
        };
        let bounded = at(Some(100), Some(200));
        assert_eq!(bounded.window_state(99), "scheduled");
        assert_eq!(bounded.window_state(100), "active");
        assert_eq!(bounded.window_state(200), "expired");
        assert!(bounded.is_active(150) && !bounded.is_active(200));
        assert!(at(None, None).is_active(0));
    }
}
