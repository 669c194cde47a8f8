//! The `llmux_access` section of a config file: its serde mirror (lenient: unknown keys are
//! warned about) and its validation into key entries, policies and overrides, with every
//! problem at file + JSON path + line:column. A file without the section is not a key file.
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::key::{KeyDigest, KeyEntry, KeyLimits, KeySource, Patterns, OPERATIONS};
use super::limits::Window;
use super::metrics::KeyMetrics;
use super::quota::{normalize_api_path, Override, Policy};
use crate::config::load::{segments_of, unknown_key_hint, Problem, Severity};
use crate::config::locate::{
    display_path, element_positions, locate, position_of, Position, Segment,
};

/// The reserved top-level key of a config file that holds access control.
pub const ACCESS_SECTION: &str = "llmux_access";

#[derive(Debug, Deserialize)]
pub struct AccessSchema {
    #[serde(default)]
    pub keys: Vec<KeySchema>,
    #[serde(default)]
    pub quota_policies: Vec<PolicySchema>,
    #[serde(default)]
    pub quota_overrides: Vec<OverrideSchema>,
}

#[derive(Debug, Deserialize)]
pub struct KeySchema {
    pub name: String,
    pub owner_id: Option<String>,
    pub key_sha256: String,
    /// RFC 3339 (`2027-01-01T00:00:00Z`).
    pub expires_at: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_operations: Option<Vec<String>>,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub monthly_token_budget: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct PolicySchema {
    pub api_path: String,
    #[serde(default = "any_model")]
    pub model: String,
    pub window_type: String,
    pub request_limit: Option<u64>,
    pub token_limit: Option<u64>,
    #[serde(default = "yes")]
    pub enforce_per_user: bool,
}

#[derive(Debug, Deserialize)]
pub struct OverrideSchema {
    pub api_path: String,
    #[serde(default = "any_model")]
    pub model: String,
    pub owner_id: String,
    pub window_type: String,
    pub request_limit: Option<u64>,
    pub token_limit: Option<u64>,
    #[serde(default)]
    pub exempt: bool,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

fn any_model() -> String {
    "*".into()
}

fn yes() -> bool {
    true
}

const SECTION_KEYS: &[&str] = &["keys", "quota_policies", "quota_overrides"];
const KEY_KEYS: &[&str] = &[
    "name",
    "owner_id",
    "key_sha256",
    "expires_at",
    "disabled",
    "allowed_models",
    "allowed_operations",
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_day",
    "max_concurrent_requests",
    "monthly_token_budget",
];
const POLICY_KEYS: &[&str] = &[
    "api_path",
    "model",
    "window_type",
    "request_limit",
    "token_limit",
    "enforce_per_user",
];
const OVERRIDE_KEYS: &[&str] = &[
    "api_path",
    "model",
    "owner_id",
    "window_type",
    "request_limit",
    "token_limit",
    "exempt",
    "starts_at",
    "ends_at",
];

/// One source's access control, validated (a key file's, or the database's).
#[derive(Debug, Clone, Default)]
pub struct AccessSection {
    pub keys: Vec<KeyEntry>,
    pub policies: Vec<Policy>,
    pub overrides: Vec<Override>,
    /// `(path, METHOD)` pairs that need a key even with access control off (the database's
    /// protected endpoints; key files declare none).
    pub protected_endpoints: Vec<ProtectedEndpoint>,
}

/// fast-openai-api-proxy's protected endpoint: an exact normalised path and an upper-case method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProtectedEndpoint {
    pub path: Box<str>,
    pub method: Box<str>,
}

/// What a file's text says about access control.
#[derive(Debug)]
pub enum SectionLoad {
    /// The file has no `llmux_access` section (a provider file).
    Absent,
    /// The section, valid.
    Loaded(AccessSection),
    /// The section (or the whole file) has errors: the file's last good version stays.
    Failed,
}

/// The outcome of reading one file's section, and every problem found in it.
#[derive(Debug)]
pub struct FileSection {
    pub load: SectionLoad,
    pub problems: Vec<Problem>,
}

impl FileSection {
    /// Whether this file is (or tried to be) a key file.
    pub fn is_key_file(&self) -> bool {
        !matches!(self.load, SectionLoad::Absent)
    }
}

/// Reads the `llmux_access` section of one file's text.
pub fn parse_section(file: &Path, text: &str) -> FileSection {
    let mut report = Report {
        file,
        text,
        problems: Vec::new(),
        elements: Default::default(),
    };
    // Provider files never mention the section: they are not parsed a second time.
    if !text.contains(ACCESS_SECTION) {
        return FileSection {
            load: SectionLoad::Absent,
            problems: Vec::new(),
        };
    }
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed: Result<SectionOnly, _> = {
        let mut on_unknown = |path: serde_ignored::Path<'_>| {
            let segments = segments_of(&path);
            // Other top-level members are providers: not ours to judge.
            if segments.first() == Some(&Segment::Key(ACCESS_SECTION.into())) {
                unknown.push(segments);
            }
        };
        let ignoring = serde_ignored::Deserializer::new(&mut deserializer, &mut on_unknown);
        serde_path_to_error::deserialize(ignoring)
    };
    let parsed = parsed
        .map_err(|error| {
            let path = path_of(error.path());
            (path, error.into_inner())
        })
        .and_then(|section| {
            deserializer
                .end()
                .map(|()| section)
                .map_err(|error| (Vec::new(), error))
        });
    let schema = match parsed {
        Ok(SectionOnly(Some(schema))) => schema,
        Ok(SectionOnly(None)) => {
            return FileSection {
                load: SectionLoad::Absent,
                problems: Vec::new(),
            }
        }
        Err((path, error)) => {
            let full = error.to_string();
            let message = full
                .rfind(" at line ")
                .map_or(full.as_str(), |cut| &full[..cut])
                .to_owned();
            report.problems.push(Problem {
                severity: Severity::Error,
                file: file.to_path_buf(),
                json_path: display_path(&path),
                position: (error.line() > 0).then(|| Position {
                    line: error.line(),
                    column: error.column().max(1),
                }),
                message: format!("key file: {message}"),
            });
            return report.finish(None);
        }
    };
    for path in unknown {
        let message = unknown_key_message(&path);
        report.warn(path, message);
    }
    let section = report.validate(schema);
    report.finish(Some(section))
}

/// A config file seen by the access loader: only the section, every other member skipped.
struct SectionOnly(Option<AccessSchema>);

impl<'de> Deserialize<'de> for SectionOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = SectionOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SectionOnly, A::Error> {
                let mut section = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == ACCESS_SECTION {
                        section = Some(map.next_value::<AccessSchema>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(SectionOnly(section))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    /// Positions of the elements of each list (keys, policies, overrides), found in one pass.
    elements: std::collections::HashMap<String, Vec<Position>>,
}

fn at(path: &[Segment], key: &str) -> Vec<Segment> {
    let mut path = path.to_vec();
    path.push(Segment::Key(key.to_owned()));
    path
}

fn item(list: &str, index: usize) -> Vec<Segment> {
    vec![
        Segment::Key(ACCESS_SECTION.into()),
        Segment::Key(list.into()),
        Segment::Index(index),
    ]
}

impl Report<'_> {
    fn push(&mut self, severity: Severity, path: Vec<Segment>, message: String) {
        let position = self.position(&path);
        self.problems.push(Problem {
            severity,
            file: self.file.to_path_buf(),
            json_path: display_path(&path),
            position,
            message,
        });
    }

    fn position(&self, path: &[Segment]) -> Option<Position> {
        if let [_, Segment::Key(list), Segment::Index(index)] = path {
            if let Some(position) = self.elements.get(list).and_then(|p| p.get(*index)) {
                return Some(*position);
            }
        }
        locate(self.text, path).or_else(|| Some(position_of(self.text, 0)))
    }

    fn warn(&mut self, path: Vec<Segment>, message: String) {
        self.push(Severity::Warning, path, message);
    }

    fn error(&mut self, path: Vec<Segment>, message: String) {
        self.push(Severity::Error, path, message);
    }

    fn source(&self, path: &[Segment]) -> KeySource {
        KeySource::File {
            file: Arc::from(self.file),
            position: self.position(path),
        }
    }

    /// A limit: a positive integer when present.
    fn limit(&mut self, value: Option<u64>, path: Vec<Segment>) -> Option<u64> {
        match value {
            Some(0) => {
                self.error(
                    path,
                    "a limit must be at least 1 (to stop a key, set \"disabled\": true)".into(),
                );
                None
            }
            other => other,
        }
    }

    fn window(&mut self, text: &str, path: Vec<Segment>) -> Option<Window> {
        let window = Window::parse(text);
        if window.is_none() {
            self.error(
                path,
                format!("`{text}` is not a window_type: use minute, hour, day or month"),
            );
        }
        window
    }

    fn validate(&mut self, schema: AccessSchema) -> AccessSection {
        for list in SECTION_KEYS {
            let path = [
                Segment::Key(ACCESS_SECTION.into()),
                Segment::Key((*list).into()),
            ];
            if let Some(positions) = element_positions(self.text, &path) {
                self.elements.insert((*list).to_owned(), positions);
            }
        }
        let mut section = AccessSection::default();
        let mut seen: std::collections::HashMap<KeyDigest, usize> =
            std::collections::HashMap::with_capacity(schema.keys.len());
        for (index, key) in schema.keys.into_iter().enumerate() {
            if let Some(entry) = self.key(index, key) {
                if let Some(&first) = seen.get(&entry.digest) {
                    let first: &KeyEntry = &section.keys[first];
                    let message = format!(
                        "key `{}` has the same key_sha256 as key `{}` at {}",
                        entry.name, first.name, first.source
                    );
                    self.error(at(&item("keys", index), "key_sha256"), message);
                    continue;
                }
                seen.insert(entry.digest, section.keys.len());
                section.keys.push(entry);
            }
        }
        for (index, policy) in schema.quota_policies.into_iter().enumerate() {
            let path = item("quota_policies", index);
            let api_path = normalize_api_path(&policy.api_path);
            let window = self.window(&policy.window_type, at(&path, "window_type"));
            let request_limit = self.limit(policy.request_limit, at(&path, "request_limit"));
            let token_limit = self.limit(policy.token_limit, at(&path, "token_limit"));
            if policy.request_limit.is_none() && policy.token_limit.is_none() {
                self.error(
                    path.clone(),
                    "a quota policy needs a request_limit or a token_limit".into(),
                );
                continue;
            }
            let Some(window) = window else { continue };
            let new = Policy::new(
                &api_path,
                &policy.model,
                window,
                request_limit,
                token_limit,
                policy.enforce_per_user,
                self.source(&path),
            );
            if let Some(first) = section.policies.iter().find(|p| p.id == new.id) {
                let message = format!(
                    "a quota policy for {} and model `{}` per {} is already declared at {}",
                    new.api_path,
                    new.model,
                    window.name(),
                    first.source
                );
                self.error(path, message);
                continue;
            }
            section.policies.push(new);
        }
        for (index, entry) in schema.quota_overrides.into_iter().enumerate() {
            let path = item("quota_overrides", index);
            let api_path = normalize_api_path(&entry.api_path);
            let window = self.window(&entry.window_type, at(&path, "window_type"));
            let request_limit = self.limit(entry.request_limit, at(&path, "request_limit"));
            let token_limit = self.limit(entry.token_limit, at(&path, "token_limit"));
            if !entry.exempt && entry.request_limit.is_none() && entry.token_limit.is_none() {
                self.error(
                    path.clone(),
                    "an override needs \"exempt\": true, a request_limit or a token_limit".into(),
                );
                continue;
            }
            if let (Some(start), Some(end)) = (entry.starts_at, entry.ends_at) {
                if end <= start {
                    self.error(
                        at(&path, "ends_at"),
                        "ends_at must be after starts_at".into(),
                    );
                    continue;
                }
            }
            if entry.owner_id.is_empty() {
                self.error(at(&path, "owner_id"), "owner_id is empty".into());
                continue;
            }
            let Some(window) = window else { continue };
            let id: Arc<str> = format!(
                "override:{api_path}:{}:{}:{}",
                entry.model,
                entry.owner_id,
                window.name()
            )
            .into();
            if let Some(first) = section.overrides.iter().find(|o| o.id == id) {
                let message = format!(
                    "an override for owner `{}` on {api_path} and model `{}` per {} is already declared at {}",
                    entry.owner_id, entry.model, window.name(), first.source
                );
                self.error(path, message);
                continue;
            }
            let source = self.source(&path);
            section.overrides.push(Override {
                api_path: api_path.into(),
                model: entry.model.into(),
                owner: entry.owner_id.into(),
                window,
                request_limit,
                token_limit,
                exempt: entry.exempt,
                starts_at: entry.starts_at,
                ends_at: entry.ends_at,
                source,
                id,
            });
        }
        section
    }

    fn key(&mut self, index: usize, key: KeySchema) -> Option<KeyEntry> {
        let path = item("keys", index);
        let mut ok = true;
        let name_chars = key.name.chars().count();
        if !(1..=128).contains(&name_chars) {
            self.error(
                at(&path, "name"),
                "a key's name must have 1 to 128 characters".into(),
            );
            ok = false;
        }
        let digest = KeyDigest::from_hex(key.key_sha256.trim());
        if digest.is_none() {
            // Never echo the value: someone may have pasted the key itself.
            self.error(
                at(&path, "key_sha256"),
                "key_sha256 must be 64 hex digits (the SHA-256 of the key; `llmux keys new` prints it)"
                    .into(),
            );
            ok = false;
        }
        let expires_at = match key.expires_at.as_deref() {
            None => None,
            Some(text) => {
                match OffsetDateTime::parse(text, &Rfc3339) {
                    Ok(at) => Some(at.unix_timestamp()),
                    Err(error) => {
                        self.error(
                        at(&path, "expires_at"),
                        format!("`{text}` is not an RFC 3339 time like 2027-01-01T00:00:00Z: {error}"),
                    );
                        ok = false;
                        None
                    }
                }
            }
        };
        if key.allowed_models.as_ref().is_some_and(Vec::is_empty) {
            self.warn(
                at(&path, "allowed_models"),
                "an empty allowed_models list allows no model at all".into(),
            );
        }
        if let Some(operations) = &key.allowed_operations {
            for (i, operation) in operations.iter().enumerate() {
                if !OPERATIONS.contains(&operation.as_str()) {
                    let mut op_path = at(&path, "allowed_operations");
                    op_path.push(Segment::Index(i));
                    self.warn(
                        op_path,
                        format!(
                            "unknown operation `{operation}` (known: {})",
                            OPERATIONS.join(", ")
                        ),
                    );
                }
            }
        }
        let limits = KeyLimits {
            requests_per_minute: self
                .limit(key.requests_per_minute, at(&path, "requests_per_minute")),
            requests_per_hour: self.limit(key.requests_per_hour, at(&path, "requests_per_hour")),
            requests_per_day: self.limit(key.requests_per_day, at(&path, "requests_per_day")),
            tokens_per_minute: self.limit(key.tokens_per_minute, at(&path, "tokens_per_minute")),
            tokens_per_day: self.limit(key.tokens_per_day, at(&path, "tokens_per_day")),
            max_concurrent_requests: self.limit(
                key.max_concurrent_requests,
                at(&path, "max_concurrent_requests"),
            ),
            monthly_token_budget: self
                .limit(key.monthly_token_budget, at(&path, "monthly_token_budget")),
        };
        let (Some(digest), true) = (digest, ok) else {
            return None;
        };
        let owner = match key.owner_id.as_deref() {
            Some(owner) if !owner.is_empty() => owner.to_owned(),
            _ => format!("key:{}", key.name),
        };
        let name: Arc<str> = key.name.into();
        Some(KeyEntry {
            metric_label: Arc::clone(&name),
            name,
            owner: owner.into(),
            digest,
            expires_at,
            disabled: key.disabled,
            allowed_models: key
                .allowed_models
                .as_ref()
                .map(|models| Patterns::new(models.iter().map(String::as_str))),
            allowed_operations: key
                .allowed_operations
                .map(|ops| ops.into_iter().map(String::into_boxed_str).collect()),
            limits,
            source: self.source(&path),
            usage_bucket: None,
            metrics: KeyMetrics::default(),
        })
    }

    fn finish(self, section: Option<AccessSection>) -> FileSection {
        let failed = self.problems.iter().any(|p| p.severity == Severity::Error);
        FileSection {
            load: match section {
                Some(section) if !failed => SectionLoad::Loaded(section),
                _ => SectionLoad::Failed,
            },
            problems: self.problems,
        }
    }
}

fn path_of(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .map_while(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn unknown_key_message(path: &[Segment]) -> String {
    let Some(Segment::Key(key)) = path.last() else {
        return "unknown entry (ignored)".into();
    };
    let known: &[&str] = match path.get(1) {
        _ if path.len() == 2 => SECTION_KEYS,
        Some(Segment::Key(list)) if path.len() == 4 => match list.as_str() {
            "keys" => KEY_KEYS,
            "quota_policies" => POLICY_KEYS,
            "quota_overrides" => OVERRIDE_KEYS,
            _ => &[],
        },
        _ => &[],
    };
    unknown_key_hint(key, known)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "5f0c2b6a1b9d4e3f8a7c6b5a4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e";

    fn parse(text: &str) -> FileSection {
        parse_section(Path::new("keys.json"), text)
    }

    fn section(text: &str) -> AccessSection {
        let parsed = parse(text);
        match parsed.load {
            SectionLoad::Loaded(section) => section,
            other => panic!("{other:?}: {:?}", parsed.problems),
        }
    }

    /// Checks that `text` fails with an error at `json_path`, on `line`, saying `needle`.
    fn check_error(text: &str, json_path: &str, line: usize, needle: &str) {
        let parsed = parse(text);
        assert!(
            matches!(parsed.load, SectionLoad::Failed),
            "should fail: {text}"
        );
        let error = parsed
            .problems
            .iter()
            .find(|p| p.severity == Severity::Error)
            .unwrap();
        assert_eq!(error.json_path, json_path, "{error}");
        assert_eq!(error.position.map(|p| p.line), Some(line), "{error}");
        assert!(error.message.contains(needle), "{error}");
    }

    #[test]
    fn the_shared_example_loads_with_every_field() {
        let text = format!(
            r#"{{ "llmux_access": {{
    "keys": [ {{ "name": "alice-laptop", "owner_id": "alice", "key_sha256": "{DIGEST}",
                "expires_at": "2027-01-01T00:00:00Z", "disabled": false,
                "allowed_models": ["openai/*", "llama-*"], "allowed_operations": ["chat", "embeddings"],
                "requests_per_minute": 60, "requests_per_hour": 1000, "requests_per_day": 10000,
                "tokens_per_minute": 100000, "tokens_per_day": 1000000,
                "max_concurrent_requests": 4, "monthly_token_budget": 50000000 }} ],
    "quota_policies": [ {{ "api_path": "/v1/chat/completions", "model": "gpt-*", "window_type": "minute",
                          "request_limit": 100, "enforce_per_user": true }} ],
    "quota_overrides": [ {{ "api_path": "/v1/chat/completions", "model": "gpt-*", "owner_id": "alice",
                           "window_type": "minute", "request_limit": 5, "exempt": false,
                           "starts_at": 1767225600, "ends_at": null }} ] }} }}"#
        );
        let section = section(&text);
        let key = &section.keys[0];
        assert_eq!(&*key.name, "alice-laptop");
        assert_eq!(&*key.owner, "alice");
        assert_eq!(key.digest.to_hex(), DIGEST);
        assert_eq!(key.expires_at, Some(1_798_761_600));
        assert!(key.may_use_model("openai/gpt-4o") && !key.may_use_model("azure/gpt-4o"));
        assert!(key.may_do("chat") && !key.may_do("images"));
        assert_eq!(key.limits.monthly_token_budget, Some(50_000_000));
        assert_eq!(
            key.source.to_string(),
            "keys.json:2:15",
            "an entry knows where it is"
        );
        assert_eq!(section.policies[0].request_limit, Some(100));
        assert!(section.policies[0].per_owner);
        let override_ = &section.overrides[0];
        assert_eq!(&*override_.owner, "alice");
        assert_eq!(override_.starts_at, Some(1_767_225_600));
        assert_eq!(override_.ends_at, None);
    }

    #[test]
    fn a_provider_file_is_not_a_key_file() {
        let parsed = parse(r#"{"openAI": {"models": {}}}"#);
        assert!(!parsed.is_key_file());
        let parsed = parse(r#"{"openAI": {"prefix": "llmux_access"}}"#);
        assert!(!parsed.is_key_file(), "{:?}", parsed.problems);
        assert!(parsed.problems.is_empty());
    }

    #[test]
    fn owners_default_to_the_key_name_and_unknown_keys_only_warn() {
        let text = format!(
            "{{\"openAI\": {{\"whatever\": 1}},\n \"llmux_access\": {{\"keys\": [\n {{\"name\": \"ci\", \"key_sha256\": \"{DIGEST}\", \"request_per_minute\": 5}}]}}}}"
        );
        let parsed = parse(&text);
        let SectionLoad::Loaded(section) = &parsed.load else {
            panic!("{:?}", parsed.problems)
        };
        assert_eq!(&*section.keys[0].owner, "key:ci");
        assert!(section.keys[0].may_use_model("anything"));
        assert_eq!(parsed.problems.len(), 1, "{:?}", parsed.problems);
        let warning = &parsed.problems[0];
        assert_eq!(warning.severity, Severity::Warning);
        assert!(
            warning
                .message
                .contains("did you mean `requests_per_minute`"),
            "{warning}"
        );
        assert_eq!(warning.position.map(|p| p.line), Some(3));
    }

    #[test]
    fn errors_name_the_json_path_and_line() {
        let key = |extra: &str| {
            format!(
                "{{\"llmux_access\": {{\"keys\": [\n{{\"name\": \"k\", \"key_sha256\": \"{DIGEST}\",\n {extra}}}]}}}}"
            )
        };
        check_error(
            &key("\"requests_per_minute\": 0"),
            "llmux_access.keys[0].requests_per_minute",
            3,
            "at least 1",
        );
        check_error(
            &key("\"expires_at\": \"tomorrow\""),
            "llmux_access.keys[0].expires_at",
            3,
            "RFC 3339",
        );
        check_error(
            &key("\"requests_per_hour\": -1"),
            "llmux_access.keys[0].requests_per_hour",
            3,
            "invalid value",
        );
        check_error(
            "{\"llmux_access\": {\"keys\": [\n{\"name\": \"k\", \"key_sha256\": \"llmux_secret\"}]}}",
            "llmux_access.keys[0].key_sha256",
            2,
            "64 hex digits",
        );
        check_error(
            "{\"llmux_access\": {\"quota_policies\": [\n{\"api_path\": \"/v1/x\", \"window_type\": \"week\", \"request_limit\": 1}]}}",
            "llmux_access.quota_policies[0].window_type",
            2,
            "not a window_type",
        );
        check_error(
            "{\"llmux_access\": {\"quota_overrides\": [\n{\"api_path\": \"/v1/x\", \"owner_id\": \"a\", \"window_type\": \"day\", \"request_limit\": 1,\n \"starts_at\": 10, \"ends_at\": 10}]}}",
            "llmux_access.quota_overrides[0].ends_at",
            3,
            "after starts_at",
        );
        check_error(
            "{\"llmux_access\": {\"keys\": [",
            "llmux_access.keys",
            1,
            "EOF",
        );
    }

    #[test]
    fn a_large_key_file_loads_in_one_pass() {
        // Quadratic work (a scan or a duplicate search per entry) would take minutes here.
        let keys: Vec<String> = (0..20_000)
            .map(|i| {
                format!(
                    "{{\"name\": \"k{i}\", \"key_sha256\": \"{}\"}}",
                    KeyDigest::of(&format!("key-{i}")).to_hex()
                )
            })
            .collect();
        for separator in [",\n", ","] {
            // One entry per line, and everything on one line (as `json.dump` writes it).
            let text = format!(
                "{{\"llmux_access\": {{\"keys\": [\n{}]}}}}",
                keys.join(separator)
            );
            let started = std::time::Instant::now();
            let section = section(&text);
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            assert_eq!(section.keys.len(), 20_000);
            let last = section.keys[19_999].source.to_string();
            let expected = if separator == ",\n" {
                "keys.json:20001:1".to_owned()
            } else {
                let line_start = text.find('\n').unwrap() + 1;
                let column = text.rfind("{\"name\"").unwrap() - line_start + 1;
                format!("keys.json:2:{column}")
            };
            assert_eq!(last, expected);
        }
    }

    #[test]
    fn a_key_error_never_echoes_the_value() {
        let parsed = parse(
            "{\"llmux_access\": {\"keys\": [{\"name\": \"k\", \"key_sha256\": \"llmux_SECRETSECRET\"}]}}",
        );
        let all = format!("{:?}", parsed.problems);
        assert!(!all.contains("SECRETSECRET"), "{all}");
    }

    #[test]
    fn duplicates_in_one_file_name_the_first_place() {
        let text = format!(
            "{{\"llmux_access\": {{\"keys\": [\n{{\"name\": \"a\", \"key_sha256\": \"{DIGEST}\"}},\n{{\"name\": \"b\", \"key_sha256\": \"{DIGEST}\"}}],\n\"quota_policies\": [{{\"api_path\": \"v1/x\", \"window_type\": \"day\", \"request_limit\": 1}},\n{{\"api_path\": \"/v1/x/\", \"window_type\": \"day\", \"request_limit\": 2}}]}}}}"
        );
        let parsed = parse(&text);
        let errors: Vec<String> = parsed.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("key `b` has the same key_sha256 as key `a` at keys.json:2:1"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("already declared at keys.json:4:"),
            "{errors:?}"
        );
    }
}
