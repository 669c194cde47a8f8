//! Client keys: minting, their SHA-256 digests (all llmux ever stores), how they are shown
//! (masked), and the entry a key table holds for each.
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};
use wildmatch::WildMatch;

use super::metrics::KeyMetrics;
use crate::config::locate::Position;

/// What every key llmux mints starts with.
pub const KEY_PREFIX: &str = "llmux_";

/// The SHA-256 digest of a client key. `Debug` and `Display` show only a prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// Digests a key as presented by a client: no allocation.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Reads 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(Self(digest))
    }

    /// All 64 hex digits: only for the entry `llmux keys new` prints, never for logs or listings.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits and an ellipsis: enough to tell keys apart in `llmux check`.
    pub fn masked(self) -> String {
        format!("{}…", &hex::encode(&self.0[..4]))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({})", self.masked())
    }
}

/// A newly minted key: `llmux_` + 32 URL-safe base64 characters (192 bits of OS randomness).
pub fn mint() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A key as it may be shown: `llmux_…XXXX` (its last four characters).
pub fn mask(key: &str) -> String {
    let tail: String = {
        let chars: Vec<char> = key.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    };
    format!("{KEY_PREFIX}…{tail}")
}

/// Where an entry came from: a config file (with the entry's position) or the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File {
        file: Arc<Path>,
        position: Option<Position>,
    },
    /// Any other source, named (a database adds its own).
    Named(Arc<str>),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { file, position } => {
                write!(f, "{}", file.display())?;
                if let Some(position) = position {
                    write!(f, ":{position}")?;
                }
                Ok(())
            }
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// A key's own limits, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub monthly_token_budget: Option<u64>,
}

/// Glob patterns (`*` any run of characters, `/` included; `?` one character).
#[derive(Debug, Clone)]
pub struct Patterns(Box<[Pattern]>);

/// One pattern. A name without wildcards matches only itself, so it is compared as it is:
/// `WildMatch` walks it character by character (about 130 instructions per admission for a
/// key's `allowed_models`, issue 16).
#[derive(Debug, Clone)]
enum Pattern {
    Exact(Box<str>),
    Glob(WildMatch),
}

impl Patterns {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            patterns
                .into_iter()
                .map(|pattern| match pattern.contains(['*', '?']) {
                    true => Pattern::Glob(WildMatch::new(pattern)),
                    false => Pattern::Exact(pattern.into()),
                })
                .collect(),
        )
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|pattern| match pattern {
            Pattern::Exact(name) => **name == *text,
            Pattern::Glob(glob) => glob.matches(text),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One client key, validated.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: Arc<str>,
    /// `owner_id`, else `key:<name>`.
    pub owner: Arc<str>,
    pub digest: KeyDigest,
    /// Seconds since the epoch after which the key is refused.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    /// `None`: every model.
    pub allowed_models: Option<Patterns>,
    /// `None`: every operation.
    pub allowed_operations: Option<Box<[Box<str>]>>,
    pub limits: KeyLimits,
    pub source: KeySource,
    /// The `key` label of its metrics: its name, or `other` beyond the table's label set
    /// (bounded cardinality). Set by the table when it publishes.
    pub metric_label: Arc<str>,
    /// Where the store counts this key's use (`key:<id>` for a database key, whose admin API
    /// shows the figures); `None` for file keys.
    pub usage_bucket: Option<Arc<str>>,
    /// Its label's metric counters, resolved on its first admission (empty in a clone).
    pub metrics: KeyMetrics,
}

impl KeyEntry {
    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|patterns| patterns.matches(model))
    }

    pub fn may_do(&self, operation: &str) -> bool {
        self.allowed_operations
            .as_ref()
            .is_none_or(|operations| operations.iter().any(|o| &**o == operation))
    }

    pub fn is_expired(&self, now_seconds: i64) -> bool {
        self.expires_at.is_some_and(|at| now_seconds >= at)
    }
}

/// The operation names a key's `allowed_operations` may list (more come with new API families).
pub const OPERATIONS: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "moderations",
    "responses",
    "images",
    "audio_speech",
    "audio_transcriptions",
    "audio_translations",
    "files",
    "batches",
    "models",
    // The model-less families, by their config names (`"families"`), and the rest.
    "uploads",
    "vector_stores",
    "containers",
    "conversations",
    "assistants",
    "threads",
    "fine_tuning",
    "evals",
    "videos",
    "audio_voices",
    "chat_completions",
    "realtime",
    "passthrough",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_the_prefix_and_192_random_bits() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("llmux_"));
        assert_eq!(a.len(), 6 + 32);
        assert!(a[6..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn digests_round_trip_through_hex_and_show_only_a_prefix() {
        let digest = KeyDigest::of("llmux_test");
        let hex = digest.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()), Some(digest));
        assert_eq!(KeyDigest::from_hex("abc"), None);
        assert_eq!(digest.masked(), format!("{}…", &hex[..8]));
        assert!(!format!("{digest:?}").contains(&hex[..9]));
        assert_eq!(mask("llmux_abcdefgh1234"), "llmux_…1234");
    }

    #[test]
    fn patterns_are_globs_across_slashes() {
        let patterns = Patterns::new(["openai/*", "llama-*", "exact"]);
        let check = |model: &str, expected: bool| {
            assert_eq!(patterns.matches(model), expected, "{model}");
        };
        check("openai/gpt-4o", true);
        check("openai/", true);
        check("llama-3.1-8b", true);
        check("exact", true);
        check("exactly", false);
        check("azure/openai/gpt-4o", false);
        assert!(Patterns::new(["*"]).matches("meta/llama 3"));
    }

    #[test]
    fn plain_names_match_as_their_globs_match() {
        let names = [
            "", "exact", "Exact", "exac", "exactly", "gpt-4o", "é/ü", "a b",
        ];
        for pattern in names {
            for text in names {
                assert_eq!(
                    Patterns::new([pattern]).matches(text),
                    WildMatch::new(pattern).matches(text),
                    "{pattern:?} {text:?}"
                );
            }
        }
        assert!(!Patterns::new([]).matches("m"));
        assert!(Patterns::new(["gpt-?o", "exact"]).matches("gpt-4o"));
    }
}
