//! Key files through the config watcher: `config::watch` hands each file it reads (and each one
//! that went) to [`KeyFiles`], which puts its `llmux_access` section in the key table. A broken
//! section keeps the file's last good version; at start-up it stops llmux.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file::{parse_section, SectionLoad, ACCESS_SECTION};
use super::key::KeySource;
use super::table::AccessTable;
use crate::config::load::{Problem, Severity};

/// The key table's file sources, and which key files fail now.
pub struct KeyFiles {
    table: Arc<AccessTable>,
    /// Key file -> its first error, while its latest text fails.
    failing: Mutex<BTreeMap<PathBuf, String>>,
}

impl KeyFiles {
    pub fn new(table: Arc<AccessTable>) -> Self {
        Self {
            table,
            failing: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn table(&self) -> &Arc<AccessTable> {
        &self.table
    }

    /// Reads a file's section (if it has one) into the table. Returns its problems, for the
    /// watcher to log and show with the file's others.
    pub fn file_read(&self, path: &Path, text: &str) -> Vec<Problem> {
        let parsed = parse_section(path, text);
        let mut problems = parsed.problems;
        match parsed.load {
            SectionLoad::Absent => {
                // The section was deleted from the file: its keys go with it.
                self.table.remove_file(path);
                self.lock().remove(path);
            }
            SectionLoad::Loaded(section) => match self.table.replace_file(path, section) {
                Ok(()) => {
                    self.lock().remove(path);
                }
                Err(conflicts) => {
                    for conflict in conflicts {
                        let position = match &conflict.at {
                            KeySource::File { position, .. } => *position,
                            KeySource::Named(_) => None,
                        };
                        problems.push(Problem {
                            severity: Severity::Error,
                            file: path.to_path_buf(),
                            json_path: ACCESS_SECTION.into(),
                            position,
                            message: conflict.message,
                        });
                    }
                    self.fail(path, &problems);
                }
            },
            SectionLoad::Failed => self.fail(path, &problems),
        }
        problems
    }

    /// A file that went: its keys go too.
    pub fn file_removed(&self, path: &Path) {
        self.table.remove_file(path);
        self.lock().remove(path);
    }

    /// Key files whose latest text fails, with their first error.
    pub fn failing(&self) -> Vec<(PathBuf, String)> {
        self.lock()
            .iter()
            .map(|(path, error)| (path.clone(), error.clone()))
            .collect()
    }

    fn fail(&self, path: &Path, problems: &[Problem]) {
        let first = problems
            .iter()
            .find(|p| p.severity == Severity::Error)
            .map_or_else(|| "invalid".to_owned(), ToString::to_string);
        self.lock().insert(path.to_path_buf(), first);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, String>> {
        self.failing
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::key::KeyDigest;

    fn key_file(name: &str, secret: &str) -> String {
        format!(
            "{{\"llmux_access\": {{\"keys\": [{{\"name\": \"{name}\", \"key_sha256\": \"{}\"}}]}}}}",
            KeyDigest::of(secret).to_hex()
        )
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version_until_fixed() {
        let files = KeyFiles::new(Arc::new(AccessTable::new()));
        let path = Path::new("keys.json");
        assert!(files.file_read(path, &key_file("a", "ka")).is_empty());
        let problems = files.file_read(path, "{\"llmux_access\": {\"keys\": [}}");
        assert_eq!(problems[0].severity, Severity::Error);
        assert!(files.table().snapshot().key(&KeyDigest::of("ka")).is_some());
        assert_eq!(files.failing().len(), 1);
        files.file_read(path, &key_file("b", "kb"));
        assert!(files.failing().is_empty());
        assert!(files.table().snapshot().key(&KeyDigest::of("ka")).is_none());
        files.file_removed(path);
        assert_eq!(files.table().snapshot().key_count(), 0);
    }

    #[test]
    fn a_duplicate_digest_across_files_fails_the_later_file_naming_both() {
        let files = KeyFiles::new(Arc::new(AccessTable::new()));
        files.file_read(Path::new("a.json"), &key_file("first", "same"));
        let problems = files.file_read(Path::new("b.json"), &key_file("second", "same"));
        let text = problems[0].to_string();
        assert!(text.starts_with("b.json:1:"), "{text}");
        assert!(
            text.contains("key `second` has the same key_sha256 as key `first` at a.json:1:"),
            "{text}"
        );
        assert_eq!(files.failing()[0].0, Path::new("b.json"));
    }

    #[test]
    fn provider_files_are_not_key_files_and_key_files_load_as_providers_without_routes() {
        let files = KeyFiles::new(Arc::new(AccessTable::new()));
        let provider = r#"{"p": {"target_base_url": "http://h", "models": {}}}"#;
        assert!(files.file_read(Path::new("p.json"), provider).is_empty());
        assert!(!files.table().ever_configured());
        // The provider loader skips the section silently: no routes, no warnings.
        let text = key_file("a", "ka");
        let load = crate::config::load::parse_file(Path::new("k.json"), &text, &|_| None);
        assert!(load.problems.is_empty(), "{:?}", load.problems);
        assert_eq!(load.endpoints.map(|e| e.len()), Some(0));
    }
}
