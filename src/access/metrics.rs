//! Metrics per client key: requests admitted, tokens used and refusals, labelled by the key's
//! metric label (its name, or `other` beyond the configured label set; `none` when no key was
//! recognised), so the series count stays bounded whatever clients send.
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::admit::Denial;

/// The key label of refusals where no key was recognised.
pub const NO_KEY: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTokenLabels {
    pub key: Arc<str>,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub key: Arc<str>,
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct AccessMetrics {
    requests: Family<KeyLabels, Counter>,
    tokens: Family<KeyTokenLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    no_key: Arc<str>,
    /// Each label's admitted and token counters, resolved once: the families hash their labels
    /// with SipHash under a lock, three lookups per admitted request (issue 16). Labels are
    /// bounded (names up to the configured label set, then `other`), and families are never
    /// cleared, so a handle stays valid.
    counters: Arc<DashMap<Arc<str>, Arc<KeyCounters>, foldhash::fast::RandomState>>,
}

/// The counters of one key label, as exported by the families.
#[derive(Debug)]
struct KeyCounters {
    requests: Counter,
    /// Prompt and completion: created on the first tokens, as `get_or_create` did.
    tokens: [OnceLock<Counter>; 2],
}

impl AccessMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            tokens: Family::default(),
            refusals: Family::default(),
            no_key: Arc::from(NO_KEY),
            counters: Arc::default(),
        };
        registry.register(
            "llmux_client_requests",
            "Requests admitted, by client key name (`other` beyond the labelled names)",
            metrics.requests.clone(),
        );
        registry.register(
            "llmux_client_tokens",
            "Tokens used (prompt, completion), by client key name",
            metrics.tokens.clone(),
        );
        registry.register(
            "llmux_client_refusals",
            "Requests refused by access control, by client key name (`none`: no known key) and reason",
            metrics.refusals.clone(),
        );
        metrics
    }

    pub fn admitted(&self, label: &Arc<str>) {
        self.counters_of(label).requests.inc();
    }

    pub fn tokens(&self, label: &Arc<str>, prompt: u64, completion: u64) {
        let counters = self.counters_of(label);
        for (index, (kind, count)) in [("prompt", prompt), ("completion", completion)]
            .into_iter()
            .enumerate()
        {
            if count > 0 {
                if let Some(counter) = counters.tokens.get(index) {
                    counter
                        .get_or_init(|| {
                            self.tokens
                                .get_or_create(&KeyTokenLabels {
                                    key: Arc::clone(label),
                                    r#type: kind,
                                })
                                .clone()
                        })
                        .inc_by(count);
                }
            }
        }
    }

    fn counters_of(&self, label: &Arc<str>) -> Arc<KeyCounters> {
        if let Some(counters) = self.counters.get(label) {
            return Arc::clone(&counters);
        }
        let counters = KeyCounters {
            requests: self
                .requests
                .get_or_create(&KeyLabels {
                    key: Arc::clone(label),
                })
                .clone(),
            tokens: [OnceLock::new(), OnceLock::new()],
        };
        Arc::clone(
            &self
                .counters
                .entry(Arc::clone(label))
                .or_insert_with(|| Arc::new(counters)),
        )
    }

    /// Counts a refusal; `label` is the key's when it was recognised.
    pub fn refused(&self, label: Option<&Arc<str>>, denial: &Denial) {
        self.refusals
            .get_or_create(&RefusalLabels {
                key: Arc::clone(label.unwrap_or(&self.no_key)),
                reason: denial.reason(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_per_key_label() {
        let mut registry = Registry::default();
        let metrics = AccessMetrics::register(&mut registry);
        let alice: Arc<str> = Arc::from("alice-laptop");
        metrics.admitted(&alice);
        metrics.tokens(&alice, 10, 0);
        metrics.refused(None, &Denial::UnknownKey);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("llmux_client_requests_total{key=\"alice-laptop\"} 1"),
            "{text}"
        );
        assert!(text.contains("llmux_client_tokens_total{key=\"alice-laptop\",type=\"prompt\"} 10"));
        assert!(!text.contains("type=\"completion\""));
        assert!(
            text.contains("llmux_client_refusals_total{key=\"none\",reason=\"invalid_api_key\"} 1")
        );
    }
}
