//! The routing table: exposed model -> path -> pool, replaced one config file at a time.
//!
//! Readers look a model up in a `DashMap` and get an `Arc<ModelRoutes>`: an immutable snapshot of
//! every route of that model, so a request sees one whole version of it and a lookup allocates
//! nothing. Writers replace or remove a whole file's endpoints under one lock and re-publish only
//! the models that file touches.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::endpoint::Endpoint;
use super::pool::Pool;

/// Every route of one exposed model.
#[derive(Debug)]
pub struct ModelRoutes {
    pub name: Arc<str>,
    /// Unix seconds when the model first appeared, for `GET /v1/models`.
    pub created: u64,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    pub path: Box<str>,
    pub pool: Pool,
}

impl ModelRoutes {
    pub fn pool(&self, path: &str) -> Option<&Pool> {
        self.routes
            .iter()
            .find(|route| &*route.path == path)
            .map(|route| &route.pool)
    }

    /// The provider that owns the model: the provider of its first endpoint.
    pub fn owner(&self) -> &str {
        self.routes
            .first()
            .and_then(|route| route.pool.members().first())
            .map_or("", |endpoint| &*endpoint.provider)
    }

    pub fn served_paths(&self) -> String {
        self.routes
            .iter()
            .map(|route| format!("/{}", route.path))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one table update did, for the reload summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableChange {
    pub models_added: Vec<String>,
    pub models_removed: Vec<String>,
    pub models_changed: Vec<String>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    models: DashMap<Box<str>, Arc<ModelRoutes>>,
    /// The writers' view: each file's endpoints by model. Held while writing.
    files: Mutex<Files>,
    /// The readers' view of the files (`/admin/config`, `/metrics`, `llmux check`): replaced at
    /// the end of each update, so a reader never waits for one.
    published: RwLock<Arc<PublishedFiles>>,
    generation: AtomicU64,
}

/// Each file's endpoints in load order; files in name order.
pub type PublishedFiles = BTreeMap<PathBuf, Arc<[Arc<Endpoint>]>>;

/// Indexes that keep an update linear in the endpoints it touches, however large the table.
#[derive(Debug, Default)]
struct Files {
    files: BTreeMap<PathBuf, FileEndpoints>,
    /// Which files serve each model (in name order).
    model_files: HashMap<Arc<str>, BTreeSet<Arc<Path>>>,
}

#[derive(Debug)]
struct FileEndpoints {
    path: Arc<Path>,
    all: Arc<[Arc<Endpoint>]>,
    by_model: HashMap<Arc<str>, Vec<Arc<Endpoint>>>,
}

impl RoutingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn lookup(&self, model: &str) -> Option<Arc<ModelRoutes>> {
        self.models
            .get(model)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// Every model, sorted by name.
    pub fn models(&self) -> Vec<Arc<ModelRoutes>> {
        let mut all: Vec<_> = self
            .models
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn route_count(&self) -> usize {
        self.models.iter().map(|entry| entry.routes.len()).sum()
    }

    /// Bumped by every update that changed something.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every endpoint of every file, in file then load order.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.published_files()
            .values()
            .flat_map(|endpoints| endpoints.iter().cloned())
            .collect()
    }

    /// The files as last published; never waits for an update in progress.
    pub fn published_files(&self) -> Arc<PublishedFiles> {
        Arc::clone(
            &self
                .published
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Replaces the endpoints a file contributes, as a unit.
    pub fn replace_file(&self, file: &Path, endpoints: Vec<Endpoint>) -> TableChange {
        let endpoints = endpoints.into_iter().map(Arc::new).collect();
        self.update(file, Some(endpoints))
    }

    /// Removes every endpoint a file contributed.
    pub fn remove_file(&self, file: &Path) -> TableChange {
        self.update(file, None)
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.published_files().keys().cloned().collect()
    }

    fn update(&self, file: &Path, endpoints: Option<Vec<Arc<Endpoint>>>) -> TableChange {
        let mut guard = self
            .files
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Files { files, model_files } = &mut *guard;
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        let old = files.remove(file);
        if let Some(old) = &old {
            for model in old.by_model.keys() {
                touched.insert(Arc::clone(model));
                if let Some(serving) = model_files.get_mut(model) {
                    serving.remove(&old.path);
                    if serving.is_empty() {
                        model_files.remove(model);
                    }
                }
            }
        }
        if let Some(new) = endpoints {
            let new = match &old {
                Some(old) => keep_unchanged(&old.all, new),
                None => new,
            };
            let path: Arc<Path> = Arc::from(file);
            let mut by_model: HashMap<Arc<str>, Vec<Arc<Endpoint>>> = HashMap::new();
            for endpoint in &new {
                by_model
                    .entry(Arc::clone(&endpoint.exposed_model))
                    .or_default()
                    .push(Arc::clone(endpoint));
            }
            for model in by_model.keys() {
                touched.insert(Arc::clone(model));
                model_files
                    .entry(Arc::clone(model))
                    .or_default()
                    .insert(Arc::clone(&path));
            }
            files.insert(
                file.to_path_buf(),
                FileEndpoints {
                    path,
                    all: new.into(),
                    by_model,
                },
            );
        }

        let mut change = TableChange::default();
        for model in touched {
            let members: Vec<&Arc<Endpoint>> = model_files
                .get(&model)
                .into_iter()
                .flatten()
                .filter_map(|path| files.get(&**path))
                .filter_map(|file| file.by_model.get(&model))
                .flatten()
                .collect();
            let previous = self.models.get(&*model).map(|e| Arc::clone(e.value()));
            if members.is_empty() {
                self.models.remove(&*model);
                change.models_removed.push(model.to_string());
                continue;
            }
            if let Some(previous) = &previous {
                if same_members(previous, &members) {
                    continue;
                }
            }
            let created = previous.as_ref().map_or_else(unix_now, |p| p.created);
            let routes = build_model(&model, created, &members);
            self.models.insert(Box::from(&*model), Arc::new(routes));
            match previous {
                Some(_) => change.models_changed.push(model.to_string()),
                None => change.models_added.push(model.to_string()),
            }
        }
        let published: PublishedFiles = files
            .iter()
            .map(|(path, file)| (path.clone(), Arc::clone(&file.all)))
            .collect();
        *self
            .published
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(published);
        if change != TableChange::default() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        change
    }
}

/// A model's endpoints grouped by path, each path's in load order, paths in order of first
/// appearance: each group is a pool.
fn by_path<'a>(members: &[&'a Arc<Endpoint>]) -> Vec<(Box<str>, Vec<&'a Arc<Endpoint>>)> {
    let mut groups: Vec<(Box<str>, Vec<&Arc<Endpoint>>)> = Vec::new();
    for endpoint in members {
        match groups.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, list)) => list.push(endpoint),
            None => groups.push((endpoint.path.clone(), vec![endpoint])),
        }
    }
    groups
}

fn build_model(model: &Arc<str>, created: u64, members: &[&Arc<Endpoint>]) -> ModelRoutes {
    let routes = by_path(members)
        .into_iter()
        .filter_map(|(path, list)| {
            Pool::new(list.into_iter().cloned().collect()).map(|pool| Route { path, pool })
        })
        .collect();
    ModelRoutes {
        name: Arc::clone(model),
        created,
        routes,
    }
}

/// The new endpoints of a file, each one identical to an old one replaced by the old one, so its
/// circuit breaker state survives a reload of its file. Old endpoints are indexed by model, path
/// and target, so a file of many models is matched in linear time.
fn keep_unchanged(old: &[Arc<Endpoint>], new: Vec<Arc<Endpoint>>) -> Vec<Arc<Endpoint>> {
    let mut candidates: HashMap<(&str, &str, &str), Vec<&Arc<Endpoint>>> = HashMap::new();
    for endpoint in old {
        candidates
            .entry((
                &endpoint.exposed_model,
                &endpoint.path,
                &endpoint.target_model_name,
            ))
            .or_default()
            .push(endpoint);
    }
    let kept: Vec<Option<Arc<Endpoint>>> = new
        .iter()
        .map(|endpoint| {
            let key = (
                &*endpoint.exposed_model,
                &*endpoint.path,
                &*endpoint.target_model_name,
            );
            let list = candidates.get_mut(&key)?;
            let index = list.iter().position(|c| c.same_config(endpoint))?;
            Some(Arc::clone(list.remove(index)))
        })
        .collect();
    drop(candidates);
    new.into_iter()
        .zip(kept)
        .map(|(endpoint, kept)| kept.unwrap_or(endpoint))
        .collect()
}

/// True when a model would be rebuilt from exactly the endpoints it already has, in the same
/// pools and order, so touching a file without changing it causes no route churn.
fn same_members(previous: &ModelRoutes, members: &[&Arc<Endpoint>]) -> bool {
    let old_count: usize = previous.routes.iter().map(|r| r.pool.members().len()).sum();
    let old = previous
        .routes
        .iter()
        .flat_map(|route| route.pool.members());
    let new = by_path(members).into_iter().flat_map(|(_, list)| list);
    old_count == members.len()
        && old
            .zip(new)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.same_config(b))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::endpoint::tests::endpoint;
    use std::time::Duration;

    #[test]
    fn a_file_is_replaced_and_removed_as_a_unit() {
        let table = RoutingTable::new();
        let a = Path::new("a.json");
        let change = table.replace_file(
            a,
            vec![
                endpoint("a.json", "m", "v1/chat/completions", "t1"),
                endpoint("a.json", "n", "v1/embeddings", "e1"),
            ],
        );
        assert_eq!(change.models_added, vec!["m", "n"]);
        let m = table.lookup("m").unwrap();
        assert_eq!(
            &*m.pool("v1/chat/completions")
                .unwrap()
                .pick()
                .target_model_name,
            "t1"
        );

        let change = table.replace_file(
            a,
            vec![endpoint("a.json", "m", "v1/chat/completions", "t2")],
        );
        assert_eq!(change.models_changed, vec!["m"]);
        assert_eq!(change.models_removed, vec!["n"]);
        assert!(table.lookup("n").is_none());
        // A request that looked up the old version keeps it whole.
        assert_eq!(
            &*m.pool("v1/chat/completions")
                .unwrap()
                .pick()
                .target_model_name,
            "t1"
        );

        table.remove_file(a);
        assert!(table.lookup("m").is_none());
        assert_eq!(table.route_count(), 0);
    }

    #[test]
    fn same_model_across_files_keeps_file_name_order_and_other_files_survive() {
        let table = RoutingTable::new();
        table.replace_file(
            Path::new("b.json"),
            vec![endpoint("b.json", "m", "v1/x", "from-b")],
        );
        table.replace_file(
            Path::new("a.json"),
            vec![endpoint("a.json", "m", "v1/x", "from-a")],
        );
        let pool_targets: Vec<String> = table
            .lookup("m")
            .unwrap()
            .pool("v1/x")
            .unwrap()
            .members()
            .iter()
            .map(|e| e.target_model_name.to_string())
            .collect();
        assert_eq!(pool_targets, vec!["from-a", "from-b"]);

        table.remove_file(Path::new("a.json"));
        assert_eq!(
            &*table
                .lookup("m")
                .unwrap()
                .pool("v1/x")
                .unwrap()
                .pick()
                .target_model_name,
            "from-b"
        );
    }

    #[test]
    fn a_change_to_any_setting_is_published() {
        // Regression: provider-adaptation settings (issue #8) were once not compared, so a reload
        // that only changed drop_params kept serving the old endpoint.
        let table = RoutingTable::new();
        table.replace_file(
            Path::new("a.json"),
            vec![endpoint("a.json", "m", "v1/x", "t")],
        );
        let mut changed = endpoint("a.json", "m", "v1/x", "t");
        changed.drop_params = vec![Box::from("logprobs")].into_boxed_slice();
        let change = table.replace_file(Path::new("a.json"), vec![changed]);
        assert_eq!(change.models_changed, vec!["m"]);
        let pool = table.lookup("m").unwrap();
        assert_eq!(
            &*pool.pool("v1/x").unwrap().members()[0].drop_params[0],
            "logprobs"
        );
    }

    #[test]
    fn an_unchanged_file_causes_no_churn() {
        let table = RoutingTable::new();
        table.replace_file(
            Path::new("a.json"),
            vec![endpoint("a.json", "m", "v1/x", "t")],
        );
        let generation = table.generation();
        let change = table.replace_file(
            Path::new("a.json"),
            vec![endpoint("a.json", "m", "v1/x", "t")],
        );
        assert_eq!(change, TableChange::default());
        assert_eq!(table.generation(), generation);
    }

    #[test]
    fn reloading_a_file_keeps_the_breaker_state_of_its_unchanged_endpoints() {
        use crate::routing::breaker::{now_ms, BreakerPolicy, Verdict};
        let table = RoutingTable::new();
        let a = Path::new("a.json");
        table.replace_file(a, vec![endpoint("a.json", "m", "v1/x", "t")]);
        table.replace_file(
            Path::new("b.json"),
            vec![endpoint("b.json", "m", "v1/x", "u")],
        );
        let policy = BreakerPolicy {
            eject_after: 1,
            cooldown: Duration::from_secs(60),
        };
        let routes = table.lookup("m").unwrap();
        let members = routes.pool("v1/x").unwrap().members();
        members[0]
            .breaker
            .record(Verdict::Failed, &policy, now_ms());
        assert!(members[0].is_ejected());

        table.replace_file(a, vec![endpoint("a.json", "m", "v1/x", "t")]);
        table.replace_file(
            Path::new("b.json"),
            vec![endpoint("b.json", "m", "v1/x", "u2")],
        );
        let routes = table.lookup("m").unwrap();
        let members = routes.pool("v1/x").unwrap().members();
        assert_eq!(&*members[1].target_model_name, "u2");
        assert!(members[0].is_ejected());
    }
}
