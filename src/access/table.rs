//! The key table: every source's keys, policies, overrides and protected endpoints merged into
//! one immutable snapshot, looked up by digest in O(1) without allocation or IO. Each source (a
//! config file; the database, `access::database`) is replaced as a unit and keeps its last good
//! version when a new one conflicts with another source (a duplicate key digest, policy or
//! override, or a database key named like a file key, names both places).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::file::{AccessSection, ProtectedEndpoint};
use super::key::{KeyDigest, KeyEntry, KeySource};
use super::quota::{Override, Policy};

/// Where a section came from, as the table knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceId {
    File(PathBuf),
    Named(String),
}

/// What the table holds at one moment. Requests take an `Arc` of it: a reload never changes
/// the snapshot a request is looking at.
#[derive(Debug, Default)]
pub struct AccessSnapshot {
    keys: HashMap<KeyDigest, Arc<KeyEntry>, BuildHasherDefault<DigestHasher>>,
    /// In source order, then file order: the order they are checked in.
    pub policies: Vec<Policy>,
    /// Owner -> that owner's overrides.
    overrides: HashMap<Arc<str>, Vec<Override>>,
    /// Paths and methods that need a key even with access control off.
    /// Path -> its protected methods.
    protected: HashMap<Box<str>, Vec<Box<str>>>,
}

impl AccessSnapshot {
    pub fn key(&self, digest: &KeyDigest) -> Option<&Arc<KeyEntry>> {
        self.keys.get(digest)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Every key, for listings (never showing a digest in full).
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.keys.values()
    }

    /// The owner's overrides of the policies for (`api_path`, `model`).
    pub fn overrides_of<'a>(
        &'a self,
        owner: &str,
        policy: &'a Policy,
    ) -> impl Iterator<Item = &'a Override> + 'a {
        self.overrides
            .get(owner)
            .into_iter()
            .flatten()
            .filter(move |o| policy.same_target(&o.api_path, &o.model))
    }

    pub fn overrides(&self) -> impl Iterator<Item = &Override> {
        self.overrides.values().flatten()
    }

    /// Whether `method path` (`POST`, `/v1/chat/completions`) is a protected endpoint.
    pub fn is_protected(&self, path: &str, method: &str) -> bool {
        self.protected
            .get(path)
            .is_some_and(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }
}

/// A refused replacement: the problems, each naming both places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Where in the new version (an entry's source).
    pub at: KeySource,
    pub message: String,
}

/// The metrics label of keys outside the label set.
pub const OTHER_LABEL: &str = "other";
/// Without a configured label set, this many key names (in name order) get their own label.
pub const DEFAULT_KEY_LABELS: usize = 100;

/// Which key names get their own metrics label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LabelSet {
    /// The first [`DEFAULT_KEY_LABELS`] names in name order.
    #[default]
    FirstNames,
    /// Exactly these names (`--key-metrics-labels`).
    Names(BTreeSet<String>),
}

/// Every source's last good section and the merged snapshot.
#[derive(Default)]
pub struct AccessTable {
    labels: LabelSet,
    sources: Mutex<BTreeMap<SourceId, Arc<AccessSection>>>,
    snapshot: RwLock<Arc<AccessSnapshot>>,
    /// Set by the first section ever loaded: `--access-control auto` turns on then, and stays on.
    configured: AtomicBool,
    /// Whether the snapshot protects any endpoint: with access control off, the one question a
    /// request asks (no snapshot taken while nothing is protected).
    any_protected: AtomicBool,
}

impl AccessTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_labels(labels: LabelSet) -> Self {
        Self {
            labels,
            ..Self::default()
        }
    }

    /// The current snapshot: one read lock and an `Arc` clone.
    pub fn snapshot(&self) -> Arc<AccessSnapshot> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Whether any source ever had a section (even one removed since).
    pub fn ever_configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// Whether any endpoint is protected now (one atomic load).
    pub fn protects_any(&self) -> bool {
        self.any_protected.load(Ordering::Acquire)
    }

    /// Whether `method path` is a protected endpoint now.
    pub fn protects(&self, path: &str, method: &str) -> bool {
        self.any_protected.load(Ordering::Acquire) && self.snapshot().is_protected(path, method)
    }

    /// Whether any source has a section now.
    pub fn has_sources(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Whether a key file (not the database) declares a key named `name` now: the admin API
    /// refuses that name, since the table would refuse the database version holding it.
    pub fn file_has_key_named(&self, name: &str) -> bool {
        self.lock()
            .iter()
            .filter(|(id, _)| !is_database(id))
            .any(|(_, section)| section.keys.iter().any(|key| &*key.name == name))
    }

    pub fn replace_file(&self, path: &Path, section: AccessSection) -> Result<(), Vec<Conflict>> {
        self.replace_source(SourceId::File(path.to_path_buf()), section)
    }

    pub fn remove_file(&self, path: &Path) -> bool {
        self.remove_source(&SourceId::File(path.to_path_buf()))
    }

    /// Replaces one source's section. Refused (the previous version stays) when it declares a
    /// key digest, policy or override another source declares.
    pub fn replace_source(
        &self,
        id: SourceId,
        section: AccessSection,
    ) -> Result<(), Vec<Conflict>> {
        let mut sources = self.lock();
        let conflicts = conflicts_with_others(&sources, &id, &section);
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        sources.insert(id, Arc::new(section));
        self.publish(&sources);
        self.configured.store(true, Ordering::Release);
        Ok(())
    }

    pub fn remove_source(&self, id: &SourceId) -> bool {
        let mut sources = self.lock();
        let removed = sources.remove(id).is_some();
        if removed {
            self.publish(&sources);
        }
        removed
    }

    fn publish(&self, sources: &BTreeMap<SourceId, Arc<AccessSection>>) {
        let key_count = sources.values().map(|s| s.keys.len()).sum();
        let mut snapshot = AccessSnapshot {
            keys: HashMap::with_capacity_and_hasher(key_count, Default::default()),
            ..Default::default()
        };
        let labelled: BTreeSet<&str> = match &self.labels {
            LabelSet::Names(names) => names.iter().map(String::as_str).collect(),
            LabelSet::FirstNames => sources
                .values()
                .flat_map(|s| s.keys.iter().map(|k| &*k.name))
                .collect::<BTreeSet<&str>>()
                .into_iter()
                .take(DEFAULT_KEY_LABELS)
                .collect(),
        };
        let other: Arc<str> = Arc::from(OTHER_LABEL);
        for section in sources.values() {
            for key in &section.keys {
                let mut key = key.clone();
                if !labelled.contains(&*key.name) {
                    key.metric_label = Arc::clone(&other);
                }
                snapshot.keys.insert(key.digest, Arc::new(key));
            }
            snapshot.policies.extend(section.policies.iter().cloned());
            for entry in &section.overrides {
                snapshot
                    .overrides
                    .entry(Arc::clone(&entry.owner))
                    .or_default()
                    .push(entry.clone());
            }
            for ProtectedEndpoint { path, method } in &section.protected_endpoints {
                snapshot
                    .protected
                    .entry(path.clone())
                    .or_default()
                    .push(method.clone());
            }
        }
        let any_protected = !snapshot.protected.is_empty();
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(snapshot);
        self.any_protected.store(any_protected, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SourceId, Arc<AccessSection>>> {
        self.sources
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn conflicts_with_others(
    sources: &BTreeMap<SourceId, Arc<AccessSection>>,
    id: &SourceId,
    section: &AccessSection,
) -> Vec<Conflict> {
    let others: Vec<&AccessSection> = sources
        .iter()
        .filter(|(other, _)| *other != id)
        .map(|(_, s)| &**s)
        .collect();
    let mut conflicts = Vec::new();
    if others.is_empty() {
        return conflicts;
    }
    let digests: HashMap<KeyDigest, &KeyEntry> = others
        .iter()
        .flat_map(|s| s.keys.iter())
        .map(|k| (k.digest, k))
        .collect();
    // Key files may repeat a name (names are labels there), but a database key named like a
    // file key would make the admin API and the files disagree about which key that is.
    let names: HashMap<&str, &KeyEntry> = sources
        .iter()
        .filter(|(other, _)| *other != id && is_database(other) != is_database(id))
        .flat_map(|(_, s)| s.keys.iter())
        .map(|k| (&*k.name, k))
        .collect();
    for key in &section.keys {
        if let Some(first) = digests.get(&key.digest) {
            conflicts.push(Conflict {
                at: key.source.clone(),
                message: format!(
                    "key `{}` has the same key_sha256 as key `{}` at {}",
                    key.name, first.name, first.source
                ),
            });
        } else if let Some(first) = names.get(&*key.name) {
            conflicts.push(Conflict {
                at: key.source.clone(),
                message: format!(
                    "key `{}` has the same name as the key at {}",
                    key.name, first.source
                ),
            });
        }
    }
    for policy in &section.policies {
        if let Some(first) = others
            .iter()
            .flat_map(|s| s.policies.iter())
            .find(|p| p.id == policy.id)
        {
            conflicts.push(Conflict {
                at: policy.source.clone(),
                message: format!(
                    "a quota policy for {} and model `{}` per {} is already declared at {}",
                    policy.api_path,
                    policy.model,
                    policy.window.name(),
                    first.source
                ),
            });
        }
    }
    for entry in &section.overrides {
        if let Some(first) = others
            .iter()
            .flat_map(|s| s.overrides.iter())
            .find(|o| o.id == entry.id)
        {
            conflicts.push(Conflict {
                at: entry.source.clone(),
                message: format!(
                    "an override for owner `{}` on {} and model `{}` per {} is already declared at {}",
                    entry.owner,
                    entry.api_path,
                    entry.model,
                    entry.window.name(),
                    first.source
                ),
            });
        }
    }
    conflicts
}

fn is_database(id: &SourceId) -> bool {
    matches!(id, SourceId::Named(_))
}

/// Key digests are SHA-256 outputs, uniformly random: their first bytes are already a good
/// hash, so lookups skip SipHash. (Nobody outside can choose which digests are in the table.)
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::key::{KeyLimits, Patterns};

    fn key(name: &str, secret: &str, file: &str) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            owner: format!("key:{name}").into(),
            digest: KeyDigest::of(secret),
            expires_at: None,
            disabled: false,
            allowed_models: Some(Patterns::new(["*"])),
            allowed_operations: None,
            limits: KeyLimits::default(),
            source: KeySource::File {
                file: Arc::from(Path::new(file)),
                position: None,
            },
            metric_label: name.into(),
            usage_bucket: None,
            metrics: Default::default(),
        }
    }

    fn section(keys: Vec<KeyEntry>) -> AccessSection {
        AccessSection {
            keys,
            ..Default::default()
        }
    }

    #[test]
    fn keys_are_found_by_digest_across_files() {
        let table = AccessTable::new();
        assert!(!table.ever_configured());
        table
            .replace_file(Path::new("a.json"), section(vec![key("a", "ka", "a.json")]))
            .unwrap();
        table
            .replace_file(Path::new("b.json"), section(vec![key("b", "kb", "b.json")]))
            .unwrap();
        let snapshot = table.snapshot();
        assert_eq!(&*snapshot.key(&KeyDigest::of("kb")).unwrap().name, "b");
        assert!(snapshot.key(&KeyDigest::of("kc")).is_none());
        assert_eq!(snapshot.key_count(), 2);
        assert!(table.ever_configured());
    }

    #[test]
    fn a_file_is_replaced_as_a_unit_and_removed_whole() {
        let table = AccessTable::new();
        let path = Path::new("a.json");
        table
            .replace_file(path, section(vec![key("old", "k1", "a.json")]))
            .unwrap();
        let before = table.snapshot();
        table
            .replace_file(path, section(vec![key("new", "k2", "a.json")]))
            .unwrap();
        assert!(table.snapshot().key(&KeyDigest::of("k1")).is_none());
        assert!(table.snapshot().key(&KeyDigest::of("k2")).is_some());
        assert!(
            before.key(&KeyDigest::of("k1")).is_some(),
            "a request's snapshot never changes under it"
        );
        assert!(table.remove_file(path));
        assert_eq!(table.snapshot().key_count(), 0);
        assert!(table.ever_configured(), "auto mode stays on");
    }

    #[test]
    fn a_duplicate_digest_in_another_file_is_refused_naming_both() {
        let table = AccessTable::new();
        table
            .replace_file(
                Path::new("a.json"),
                section(vec![key("a", "same", "a.json")]),
            )
            .unwrap();
        table
            .replace_file(Path::new("b.json"), section(vec![key("b", "kb", "b.json")]))
            .unwrap();
        let conflicts = table
            .replace_file(
                Path::new("b.json"),
                section(vec![key("b2", "same", "b.json")]),
            )
            .unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].at.to_string(), "b.json");
        assert!(conflicts[0]
            .message
            .contains("key `b2` has the same key_sha256 as key `a` at a.json"));
        // b.json keeps its last good version.
        assert!(table.snapshot().key(&KeyDigest::of("kb")).is_some());
        // The same digest moving within one file is no conflict.
        table
            .replace_file(
                Path::new("a.json"),
                section(vec![key("a", "same", "a.json")]),
            )
            .unwrap();
    }

    #[test]
    fn metrics_labels_are_bounded_by_the_label_set() {
        let table = AccessTable::with_labels(LabelSet::Names(BTreeSet::from(["b".to_owned()])));
        table
            .replace_file(
                Path::new("a.json"),
                section(vec![key("a", "ka", "a.json"), key("b", "kb", "a.json")]),
            )
            .unwrap();
        let label = |secret: &str| {
            table
                .snapshot()
                .key(&KeyDigest::of(secret))
                .unwrap()
                .metric_label
                .to_string()
        };
        assert_eq!(label("ka"), "other");
        assert_eq!(label("kb"), "b");
        let table = AccessTable::new();
        let keys = (0..DEFAULT_KEY_LABELS + 1)
            .map(|i| key(&format!("k{i:03}"), &format!("s{i}"), "a.json"))
            .collect();
        table
            .replace_file(Path::new("a.json"), section(keys))
            .unwrap();
        let snapshot = table.snapshot();
        let others = snapshot
            .keys()
            .filter(|k| &*k.metric_label == OTHER_LABEL)
            .count();
        assert_eq!(others, 1);
        assert_eq!(
            &*snapshot.key(&KeyDigest::of("s100")).unwrap().metric_label,
            OTHER_LABEL
        );
    }

    #[test]
    fn the_digest_hasher_spreads_digests() {
        let mut a = DigestHasher::default();
        a.write(&KeyDigest::of("x").0);
        let mut b = DigestHasher::default();
        b.write(&KeyDigest::of("y").0);
        assert_ne!(a.finish(), b.finish());
    }
}
