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
use super::key::KeyEntry;

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

/// The counters of one key label, as exported by the families. An admission holds its key's
/// (`KeyEntry::metrics` keeps them, so a request looks up no label).
#[derive(Debug)]
pub struct KeyCounters {
    requests: Counter,
    /// Prompt and completion: created on the first tokens, as `get_or_create` did.
    tokens: [OnceLock<Counter>; 2],
    label: Arc<str>,
    family: Family<KeyTokenLabels, Counter>,
}

/// A key entry's handle on its label's counters, resolved on its first admission. A clone is
/// empty: the table clones entries to give them their label, which may differ.
#[derive(Default)]
pub struct KeyMetrics(OnceLock<(MetricsId, Arc<KeyCounters>)>);

/// Which `AccessMetrics` resolved a handle (tests run several servers, each with its own
/// registry, in one process).
type MetricsId = usize;

impl Clone for KeyMetrics {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for KeyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMetrics")
    }
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

    /// The counters of `entry`'s label: its own handle once resolved, a lookup otherwise.
    pub fn of_key(&self, entry: &KeyEntry) -> Arc<KeyCounters> {
        let id = Arc::as_ptr(&self.counters) as MetricsId;
        let (resolved_by, counters) = entry
            .metrics
            .0
            .get_or_init(|| (id, self.counters_of(&entry.metric_label)));
        match *resolved_by == id {
            true => Arc::clone(counters),
            false => self.counters_of(&entry.metric_label),
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
            label: Arc::clone(label),
            family: self.tokens.clone(),
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

impl KeyCounters {
    pub fn admitted(&self) {
        self.requests.inc();
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        for (index, (kind, count)) in [("prompt", prompt), ("completion", completion)]
            .into_iter()
            .enumerate()
        {
            if count > 0 {
                if let Some(counter) = self.tokens.get(index) {
                    counter
                        .get_or_init(|| {
                            self.family
                                .get_or_create(&KeyTokenLabels {
                                    key: Arc::clone(&self.label),
                                    r#type: kind,
                                })
                                .clone()
                        })
                        .inc_by(count);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_per_key_label() {
        let mut registry = Registry::default();
        let metrics = AccessMetrics::register(&mut registry);
        let alice = metrics.counters_of(&Arc::from("alice-laptop"));
        alice.admitted();
        alice.tokens(10, 0);
        metrics.refused(None, &Denial::UnknownKey);
        let text = render(&registry);
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

    #[test]
    fn a_key_keeps_its_counters_per_registry_and_a_clone_resolves_its_own() {
        let entry = entry("alice-laptop");
        let (mut first, mut second) = (Registry::default(), Registry::default());
        let (one, two) = (
            AccessMetrics::register(&mut first),
            AccessMetrics::register(&mut second),
        );
        one.of_key(&entry).admitted();
        one.of_key(&entry).admitted();
        two.of_key(&entry).admitted();
        let relabelled = KeyEntry {
            metric_label: Arc::from("other"),
            ..entry.clone()
        };
        one.of_key(&relabelled).tokens(0, 5);
        let (first, second) = (render(&first), render(&second));
        assert!(
            first.contains("llmux_client_requests_total{key=\"alice-laptop\"} 2"),
            "{first}"
        );
        assert!(
            first.contains("llmux_client_tokens_total{key=\"other\",type=\"completion\"} 5"),
            "{first}"
        );
        assert!(
            second.contains("llmux_client_requests_total{key=\"alice-laptop\"} 1"),
            "{second}"
        );
    }

    fn entry(name: &str) -> KeyEntry {
        use crate::access::file::{parse_section, SectionLoad};
        let digest = crate::access::key::KeyDigest::of("k").to_hex();
        let text = format!(
            r#"{{"llmux_access": {{"keys": [{{"name": "{name}", "key_sha256": "{digest}"}}]}}}}"#
        );
        match parse_section(std::path::Path::new("keys.json"), &text).load {
            SectionLoad::Loaded(mut section) => section.keys.remove(0),
            _ => panic!("the key file parses"),
        }
    }

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }
}
