//! Live config: load the config dir at start-up, then watch it (notify, or polling) and reload
//! what changed. Bursts of events are debounced into one reload; each changed file replaces its
//! routes as a unit; a broken file keeps its last good routes; SIGHUP forces a full reload.
//!
//! Every event only says "look again": a reload rescans the dir and re-parses the files whose text
//! differs from what it last read. That makes editors' write-rename-chmod dances, Kubernetes'
//! `..data` symlink swaps and touches without change all the same case.
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::load::{parse_file, scan_dir, Problem, Severity};
use crate::routing::endpoint::Endpoint;
use crate::routing::table::RoutingTable;
use crate::startup::EnvSource;

/// How the config dir is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchMode {
    /// The platform's file events (inotify on Linux).
    Notify,
    /// Scan the dir every half second, for mounts that send no file events.
    Poll,
    /// No watching: reload on SIGHUP only.
    Off,
}

// Debouncing is these two constants and `reload_on_triggers`, kept by hand rather than
// notify-debouncer-full: that crate delays each path until its events stop (a file rewritten
// non-stop would never reload; MAX_DELAY bounds that here) and spends its work stitching renames
// and file ids, while every event here only means "rescan the dir".
/// A burst of events ends after this much quiet ...
pub const QUIET: Duration = Duration::from_millis(200);
/// ... or this long after its first event, so that a file rewritten non-stop still reloads.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often `--watch poll` scans the dir.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Which files a reload parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only files whose text changed since they were last read.
    Changed,
    /// Every file, re-reading the keys from the environment (start-up and SIGHUP).
    Full,
}

/// The config as served: the routing table plus what each file was when last read.
pub struct LiveConfig {
    dir: PathBuf,
    table: Arc<RoutingTable>,
    /// Keys are read from here at each parse.
    env: EnvSource,
    /// Held by a reload from start to end (one at a time); nothing else takes it.
    state: Mutex<LoadState>,
    /// What `status()` answers: replaced at the end of each reload, so `/admin/config` and
    /// `/metrics` never wait for one.
    published: RwLock<Arc<ConfigStatus>>,
}

/// What a reload did, for its summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Files parsed (new or changed; every file on a full reload).
    pub files_read: usize,
    /// Files whose text had not changed.
    pub files_unchanged: usize,
    pub files_removed: usize,
    /// (exposed model, path) pairs that appeared, went, or now go to other endpoints.
    pub routes_added: usize,
    pub routes_removed: usize,
    pub routes_changed: usize,
    /// Files failing now (those with a last good version keep serving it).
    pub files_with_errors: usize,
    pub generation: u64,
}

/// One file as `GET /admin/config` shows it.
#[derive(Debug, Clone)]
pub struct FileStatus {
    pub file: PathBuf,
    /// When the version now serving was loaded; `None` when the file never loaded.
    pub serving_since: Option<SystemTime>,
    /// When the file started failing; `None` when its current text loaded.
    pub failing_since: Option<SystemTime>,
    /// Problems of its current text: warnings, and errors while failing.
    pub problems: Vec<Problem>,
}

/// The whole config as `GET /admin/config` shows it.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub config_dir: PathBuf,
    /// The routing table's generation: bumped by every reload that changed a route.
    pub generation: u64,
    /// When the generation last changed.
    pub loaded_at: SystemTime,
    /// When the dir was last read, and how many reloads ran (start-up included).
    pub checked_at: SystemTime,
    pub reloads: u64,
    pub files: Vec<FileStatus>,
}

struct LoadState {
    files: BTreeMap<PathBuf, FileState>,
    reloads: u64,
    loaded_at: SystemTime,
    checked_at: SystemTime,
}

struct FileState {
    /// The text last read, good or not: an event that leaves it unchanged parses nothing.
    text: String,
    serving_since: Option<SystemTime>,
    failing_since: Option<SystemTime>,
    problems: Vec<Problem>,
}

impl LiveConfig {
    /// An empty config for `dir`; [`LiveConfig::reload`] fills `table`.
    pub fn new(dir: impl Into<PathBuf>, table: Arc<RoutingTable>, env: EnvSource) -> Self {
        let now = SystemTime::now();
        let dir = dir.into();
        let state = LoadState {
            files: BTreeMap::new(),
            reloads: 0,
            loaded_at: now,
            checked_at: now,
        };
        let published = RwLock::new(Arc::new(state.status(&dir, table.generation())));
        Self {
            dir,
            table,
            env,
            state: Mutex::new(state),
            published,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rescans the dir and publishes what changed. Fails only when the dir cannot be listed, and
    /// then changes nothing.
    pub fn reload(&self, scope: Scope) -> std::io::Result<ReloadSummary> {
        let scan = scan_dir(&self.dir)?;
        for skipped in &scan.skipped {
            tracing::warn!(
                config_entry = %skipped.path.display(),
                "config warning: skipped: {}", skipped.reason
            );
        }
        let paths = scan.files;
        // One reload at a time: the watcher thread, SIGHUP and start-up all come through here.
        let mut state = self.lock();
        let before = routes_of(&self.table);
        let generation = self.table.generation();
        let now = SystemTime::now();
        let mut summary = ReloadSummary::default();
        let mut present = BTreeSet::new();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // Gone since the listing: treated as deleted below.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    present.insert(path.clone());
                    summary.files_read += 1;
                    let problem = Problem {
                        severity: Severity::Error,
                        file: path.clone(),
                        json_path: "$".into(),
                        position: None,
                        message: format!("cannot read the file: {error}"),
                    };
                    log_problem(&problem);
                    let previous = state.files.remove(&path);
                    state
                        .files
                        .insert(path, failing(previous, String::new(), vec![problem], now));
                    continue;
                }
            };
            present.insert(path.clone());
            let unchanged = state.files.get(&path).is_some_and(|p| p.text == text);
            if scope == Scope::Changed && unchanged {
                summary.files_unchanged += 1;
                continue;
            }
            let previous = state.files.remove(&path);
            summary.files_read += 1;
            let load = parse_file(&path, &text, &*self.env);
            for problem in &load.problems {
                log_problem(problem);
            }
            let entry = match load.endpoints {
                Some(endpoints) => {
                    let change = self.table.replace_file(&path, endpoints);
                    // A file read again without any change keeps its date.
                    let serving_since = match previous {
                        Some(p) if p.failing_since.is_none() && change == Default::default() => {
                            p.serving_since.unwrap_or(now)
                        }
                        _ => now,
                    };
                    FileState {
                        text,
                        serving_since: Some(serving_since),
                        failing_since: None,
                        problems: load.problems,
                    }
                }
                None => failing(previous, text, load.problems, now),
            };
            state.files.insert(path, entry);
        }

        let gone: Vec<PathBuf> = state
            .files
            .keys()
            .chain(self.table.files().iter())
            .filter(|file| !present.contains(*file))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for file in gone {
            state.files.remove(&file);
            self.table.remove_file(&file);
            summary.files_removed += 1;
        }

        let after = routes_of(&self.table);
        for (route, members) in &after {
            match before.get(route) {
                None => summary.routes_added += 1,
                Some(old) if !same_members(old, members) => summary.routes_changed += 1,
                Some(_) => {}
            }
        }
        summary.routes_removed = before.keys().filter(|r| !after.contains_key(*r)).count();
        summary.files_with_errors = state
            .files
            .values()
            .filter(|f| f.failing_since.is_some())
            .count();
        summary.generation = self.table.generation();
        state.reloads += 1;
        state.checked_at = now;
        if summary.generation != generation {
            state.loaded_at = now;
        }
        let status = Arc::new(state.status(&self.dir, summary.generation));
        *self
            .published
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = status;
        Ok(summary)
    }

    /// Reloads and logs one summary line (or the reason the dir could not be read).
    pub fn reload_and_log(&self, scope: Scope, reason: &'static str) {
        let started = Instant::now();
        match self.reload(scope) {
            Ok(summary) => log_summary(&summary, reason, started.elapsed()),
            Err(error) => tracing::error!(
                config_dir = %self.dir.display(), reason, %error,
                "config reload failed: cannot read the config dir; every route stays as it was"
            ),
        }
    }

    /// The config as of the last reload; never waits for one in progress.
    pub fn status(&self) -> Arc<ConfigStatus> {
        Arc::clone(
            &self
                .published
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    fn lock(&self) -> MutexGuard<'_, LoadState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl LoadState {
    fn status(&self, dir: &Path, generation: u64) -> ConfigStatus {
        ConfigStatus {
            config_dir: dir.to_path_buf(),
            generation,
            loaded_at: self.loaded_at,
            checked_at: self.checked_at,
            reloads: self.reloads,
            files: self
                .files
                .iter()
                .map(|(file, f)| FileStatus {
                    file: file.clone(),
                    serving_since: f.serving_since,
                    failing_since: f.failing_since,
                    problems: f.problems.clone(),
                })
                .collect(),
        }
    }
}

/// A file whose latest text failed: its last good version (if any) keeps serving.
fn failing(
    previous: Option<FileState>,
    text: String,
    problems: Vec<Problem>,
    now: SystemTime,
) -> FileState {
    let (serving_since, failing_since) =
        previous.map_or((None, None), |p| (p.serving_since, p.failing_since));
    FileState {
        text,
        serving_since,
        failing_since: Some(failing_since.unwrap_or(now)),
        problems,
    }
}

type RouteKey = (Arc<str>, Box<str>);

/// Every (exposed model, path) and the endpoints serving it, in pool order.
fn routes_of(table: &RoutingTable) -> BTreeMap<RouteKey, Vec<Arc<Endpoint>>> {
    let mut routes = BTreeMap::new();
    for model in table.models() {
        for route in &model.routes {
            routes.insert(
                (Arc::clone(&model.name), route.path.clone()),
                route.pool.members().to_vec(),
            );
        }
    }
    routes
}

fn same_members(a: &[Arc<Endpoint>], b: &[Arc<Endpoint>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.same_config(b))
}

fn log_summary(summary: &ReloadSummary, reason: &'static str, took: Duration) {
    let ReloadSummary {
        files_read,
        files_unchanged,
        files_removed,
        routes_added,
        routes_removed,
        routes_changed,
        files_with_errors,
        generation,
    } = *summary;
    let took_ms = took.as_secs_f64() * 1000.0;
    if files_read == 0 && files_removed == 0 {
        // An event that changed no file's text (a touch, an editor's lock file).
        tracing::debug!(
            reason,
            files_unchanged,
            generation,
            took_ms,
            "config unchanged"
        );
        return;
    }
    let message = if files_with_errors > 0 {
        "config reloaded with errors: failing files keep their last good routes"
    } else {
        "config reloaded"
    };
    tracing::info!(
        reason,
        files_read,
        files_unchanged,
        files_removed,
        routes_added,
        routes_removed,
        routes_changed,
        files_with_errors,
        generation,
        took_ms,
        "{message}"
    );
}

/// Logs one problem with its file, JSON path and line:column. The field is `config_file`, not
/// `file`: the bunyan formatter writes the call site's own `file` (issue 12).
pub fn log_problem(problem: &Problem) {
    let position = problem.position.map(|p| p.to_string());
    match problem.severity {
        Severity::Error => tracing::error!(
            config_file = %problem.file.display(), json_path = %problem.json_path, position, "config error: {}", problem.message
        ),
        Severity::Warning => tracing::warn!(
            config_file = %problem.file.display(), json_path = %problem.json_path, position, "config warning: {}", problem.message
        ),
    }
}

enum Trigger {
    /// Something in the dir changed.
    Changed,
    /// Re-read everything (SIGHUP, lost events), for this reason.
    Full(&'static str),
    Stop,
}

/// Watches the config dir and reloads on a thread of its own. Dropping it stops the watcher and
/// the thread; `Application::run_until_stopped` drops it when the server ends.
pub struct ConfigWatch {
    triggers: mpsc::Sender<Trigger>,
    /// Kept alive for its events; dropping it stops notify's own thread.
    _watcher: Option<Box<dyn Watcher + Send>>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ConfigWatch {
    /// Starts watching `live`'s dir. SIGHUP is caught from here on when called inside a Tokio
    /// runtime; [`ConfigWatch::forward_hangups`] turns each one into a full reload.
    pub fn start(live: Arc<LiveConfig>, mode: WatchMode) -> std::io::Result<Self> {
        let (triggers, receiver) = mpsc::channel();
        let watcher = match mode {
            WatchMode::Off => None,
            WatchMode::Notify => match notify_watcher(live.dir(), triggers.clone()) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::warn!(config_dir = %live.dir().display(), %error,
                        "cannot watch the config dir for events; polling it instead");
                    Some(
                        poll_watcher(live.dir(), triggers.clone())
                            .map_err(std::io::Error::other)?,
                    )
                }
            },
            WatchMode::Poll => {
                Some(poll_watcher(live.dir(), triggers.clone()).map_err(std::io::Error::other)?)
            }
        };
        let hangup = match tokio::runtime::Handle::try_current() {
            Ok(_) => Some(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            )?),
            Err(_) => None,
        };
        std::thread::Builder::new()
            .name("llmux-config-watch".into())
            .spawn(move || reload_on_triggers(&live, &receiver))?;
        tracing::info!(?mode, "watching the config dir");
        Ok(Self {
            triggers,
            _watcher: watcher,
            hangup,
        })
    }

    /// Turns every SIGHUP into a full reload. Never returns: run it beside the server.
    pub async fn forward_hangups(&mut self) -> Infallible {
        if let Some(hangup) = self.hangup.as_mut() {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading every config file");
                let _ = self.triggers.send(Trigger::Full("sighup"));
            }
        }
        std::future::pending().await
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        let _ = self.triggers.send(Trigger::Stop);
    }
}

fn notify_watcher(
    dir: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    let mut watcher = notify::recommended_watcher(on_event(triggers))?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Box::new(watcher))
}

fn poll_watcher(
    dir: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    let config = notify::Config::default()
        .with_poll_interval(POLL_INTERVAL)
        // Same-size rewrites within one mtime tick are still seen.
        .with_compare_contents(true)
        .with_follow_symlinks(true);
    let mut watcher = notify::PollWatcher::new(on_event(triggers), config)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Box::new(watcher))
}

fn on_event(triggers: mpsc::Sender<Trigger>) -> impl Fn(notify::Result<notify::Event>) + Send {
    move |event| match event {
        // Opening or reading a file (our own reloads do) changes nothing.
        Ok(event) if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) =>
            {}
        Ok(_) => {
            let _ = triggers.send(Trigger::Changed);
        }
        Err(error) => {
            // Lost events (a queue overflow): look at everything again.
            tracing::warn!(%error, "config watch error; rescanning the config dir");
            let _ = triggers.send(Trigger::Full("watch error"));
        }
    }
}

/// The reload thread: waits for a trigger, lets the burst settle, reloads.
fn reload_on_triggers(live: &LiveConfig, triggers: &mpsc::Receiver<Trigger>) {
    loop {
        let (mut scope, mut reason) = match triggers.recv() {
            Ok(Trigger::Changed) => (Scope::Changed, "change"),
            Ok(Trigger::Full(reason)) => (Scope::Full, reason),
            Ok(Trigger::Stop) | Err(_) => return,
        };
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                break;
            }
            match triggers.recv_timeout(wait) {
                Ok(Trigger::Changed) => {}
                Ok(Trigger::Full(why)) => (scope, reason) = (Scope::Full, why),
                Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        live.reload_and_log(scope, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[(&str, &str)]) -> String {
        let models: Vec<String> = models
            .iter()
            .map(|(model, target)| {
                format!(
                    r#""{model}": {{"endpoints": [{{"path": "v1/chat/completions", "target_model_name": "{target}"}}, {{"path": "v1/embeddings", "target_model_name": "{target}"}}]}}"#
                )
            })
            .collect();
        format!(
            r#"{{"p": {{"target_base_url": "http://127.0.0.1:9", "models": {{{}}}}}}}"#,
            models.join(", ")
        )
    }

    struct Fixture {
        dir: tempfile::TempDir,
        table: Arc<RoutingTable>,
        live: Arc<LiveConfig>,
    }

    impl Fixture {
        fn new(files: &[(&str, String)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let table = Arc::new(RoutingTable::new());
            let env: EnvSource = Arc::new(|_: &str| None);
            let live = Arc::new(LiveConfig::new(dir.path(), Arc::clone(&table), env));
            live.reload(Scope::Full).unwrap();
            Self { dir, table, live }
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).unwrap();
        }

        fn target(&self, model: &str) -> Option<String> {
            let routes = self.table.lookup(model)?;
            let pool = routes.pool("v1/chat/completions")?;
            Some(pool.pick().target_model_name.to_string())
        }
    }

    #[test]
    fn only_changed_files_are_parsed_and_the_summary_counts_routes() {
        let fixture = Fixture::new(&[
            ("a.json", config(&[("m", "t1")])),
            ("b.json", config(&[("n", "u1")])),
        ]);
        fixture.write("a.json", &config(&[("m", "t2"), ("x", "y")]));
        fixture.write("b.json", &config(&[("n", "u1")]));

        let summary = fixture.live.reload(Scope::Changed).unwrap();

        let expected = ReloadSummary {
            files_read: 1,
            files_unchanged: 1,
            routes_added: 2,
            routes_changed: 2,
            generation: fixture.table.generation(),
            ..ReloadSummary::default()
        };
        assert_eq!(summary, expected);
        assert_eq!(fixture.target("m").as_deref(), Some("t2"));
    }

    #[test]
    fn an_unchanged_dir_reloads_without_churn() {
        let fixture = Fixture::new(&[("a.json", config(&[("m", "t1")]))]);
        let generation = fixture.table.generation();

        let changed = fixture.live.reload(Scope::Changed).unwrap();
        let full = fixture.live.reload(Scope::Full).unwrap();

        assert_eq!((changed.files_read, changed.files_unchanged), (0, 1));
        assert_eq!(full.files_read, 1);
        for summary in [changed, full] {
            assert_eq!(
                (
                    summary.routes_added,
                    summary.routes_removed,
                    summary.routes_changed
                ),
                (0, 0, 0)
            );
            assert_eq!(summary.generation, generation);
        }
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_routes_and_a_deleted_one_loses_them() {
        let fixture = Fixture::new(&[
            ("a.json", config(&[("m", "t1")])),
            ("b.json", config(&[("n", "u1")])),
        ]);

        fixture.write("a.json", "{\"p\": ");
        let summary = fixture.live.reload(Scope::Changed).unwrap();
        assert_eq!(summary.files_with_errors, 1);
        assert_eq!(fixture.target("m").as_deref(), Some("t1"));
        let status = fixture.live.status();
        let a = &status.files[0];
        assert!(a.serving_since.is_some() && a.failing_since.is_some());
        assert_eq!(a.problems[0].severity, Severity::Error);

        std::fs::remove_file(fixture.dir.path().join("b.json")).unwrap();
        let summary = fixture.live.reload(Scope::Changed).unwrap();
        assert_eq!((summary.files_removed, summary.routes_removed), (1, 2));
        assert!(fixture.target("n").is_none());
        assert_eq!(fixture.target("m").as_deref(), Some("t1"));

        fixture.write("a.json", &config(&[("m", "t3")]));
        let summary = fixture.live.reload(Scope::Changed).unwrap();
        assert_eq!(summary.files_with_errors, 0);
        assert_eq!(fixture.target("m").as_deref(), Some("t3"));
        assert!(fixture.live.status().files[0].failing_since.is_none());
    }

    #[test]
    fn dropping_the_watch_stops_reloading() {
        let fixture = Fixture::new(&[("a.json", config(&[("m", "t1")]))]);
        let watch = ConfigWatch::start(Arc::clone(&fixture.live), WatchMode::Notify).unwrap();
        let wait_for_target = |target: &str| {
            let started = Instant::now();
            while fixture.target("m").as_deref() != Some(target) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no reload to {target}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        fixture.write("a.json", &config(&[("m", "t2")]));
        wait_for_target("t2");

        drop(watch);
        let reloads = fixture.live.status().reloads;
        fixture.write("a.json", &config(&[("m", "t3")]));
        std::thread::sleep(QUIET * 4);

        assert_eq!(fixture.live.status().reloads, reloads);
        assert_eq!(fixture.target("m").as_deref(), Some("t2"));
    }
}
