//! The access store: keys (as digests), quota policies, overrides, protected endpoints, usage
//! and audit, in an embedded SQLite file or a shared PostgreSQL database.
//!
//! Every database call runs on the store's own small tokio runtime, never on an actix worker:
//! handlers await a join handle, and the request path reads only the in-memory [`Snapshot`],
//! which a poll of the store's revision refreshes on every replica (see `snapshot.rs`).
pub mod keys;
pub mod quotas;
pub mod records;
pub mod snapshot;
pub mod usage;

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::AnyPool;
use sqlx::{Any, Transaction};
use tokio::sync::watch;

use crate::store::records::{AuditEntry, Snapshot};
use crate::store::usage::PendingUsage;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `<data dir>/llmux.db`, created (with the dir) on first open.
    Sqlite { data_dir: PathBuf },
    /// A `postgres://` or `postgresql://` URL.
    Postgres { url: String },
}

impl StoreLocation {
    /// A `--database-url` wins over `--data-dir`.
    pub fn from_settings(data_dir: &Path, database_url: Option<&str>) -> Result<Self, StoreError> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres { url: url.to_owned() })
            }
            Some(_) => Err(StoreError::Settings(
                "LLMUX_DATABASE_URL (--database-url) must be a postgres:// or postgresql:// URL; leave it unset for the embedded SQLite file under LLMUX_DATA_DIR".into(),
            )),
            None => Ok(Self::Sqlite {
                data_dir: data_dir.to_owned(),
            }),
        }
    }

    /// For logs and `llmux admin`: never the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { data_dir } => format!("sqlite:{}", data_dir.join(SQLITE_FILE).display()),
            Self::Postgres { url } => match url.split_once('@') {
                Some((_, host)) => format!("postgres://…@{host}"),
                None => url.clone(),
            },
        }
    }
}

pub const SQLITE_FILE: &str = "llmux.db";

/// How often every replica looks at the store's revision.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often usage counters are written.
pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a single store operation may take before the caller gets `Unavailable`.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Settings(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the store did not answer within {}s", OPERATION_TIMEOUT.as_secs())]
    Timeout,
    #[error("migrating the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} already exists")]
    Conflict { what: &'static str },
    #[error("preparing the data dir `{path}`: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store has not been reached since start-up")]
    NotReady,
    #[error("the store's runtime stopped")]
    Stopped,
    #[error("the store holds a bad row: {0}")]
    BadRow(String),
}

impl StoreError {
    /// A unique-constraint violation is the caller's conflict; anything else is the store's.
    fn from_write(error: sqlx::Error, what: &'static str) -> Self {
        match &error {
            sqlx::Error::Database(database) if database.is_unique_violation() => {
                Self::Conflict { what }
            }
            _ => Self::Unavailable(error),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(error)
    }
}

/// Cheap to clone: every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    location: StoreLocation,
    context: Context,
    // Last field: dropped after the pool's handles, it stops the store's tasks.
    runtime: RuntimeHost,
}

/// What a store operation works with, on the store's runtime.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) pool: AnyPool,
    pub(crate) snapshot: Arc<watch::Sender<Arc<Snapshot>>>,
    pub(crate) usage: Arc<PendingUsage>,
    /// Set once the store was reached and migrated.
    pub(crate) ready: Arc<AtomicBool>,
}

/// Owns the store's runtime; shuts it down without blocking (a drop may happen inside actix).
struct RuntimeHost {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Drop for RuntimeHost {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Settings of the store's background work (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct StoreTimings {
    pub poll_interval: Duration,
    pub usage_flush_interval: Duration,
}

impl Default for StoreTimings {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            usage_flush_interval: DEFAULT_USAGE_FLUSH_INTERVAL,
        }
    }
}

/// What `Store::open` does when PostgreSQL cannot be reached (or migrated) at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Return the error (the CLI: the user is waiting).
    Fail,
    /// Open anyway with an empty snapshot and keep trying every 2 s; store calls answer
    /// `NotReady` until then (a server: a restart during a database outage must still serve).
    KeepTrying,
}

/// How long start-up waits for the first connection and migrations.
const FIRST_ATTEMPT: Duration = Duration::from_secs(10);
/// Between later attempts when the first failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

impl Store {
    /// Connects (creating the SQLite file and its dir if needed), runs the migrations, loads the
    /// first snapshot and starts the revision poll and the usage writer. Blocks the calling
    /// thread until then (start-up and the CLI only), the work itself runs on the store's runtime.
    /// A SQLite store that cannot be opened is always an error.
    pub fn open(
        location: StoreLocation,
        timings: StoreTimings,
        when_unreachable: WhenUnreachable,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("llmux-store")
            .enable_all()
            .build()
            .map_err(|source| StoreError::DataDir {
                path: PathBuf::from("<runtime>"),
                source,
            })?;
        let handle = runtime.handle().clone();
        let runtime = RuntimeHost {
            runtime: Some(runtime),
            handle,
        };
        let (pool, migrations) = {
            let _entered = runtime.handle.enter();
            lazy_pool(&location)?
        };
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        let context = Context {
            pool,
            snapshot: Arc::new(snapshot),
            usage: Arc::default(),
            ready: Arc::default(),
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        let first = context.clone();
        runtime.handle.spawn(async move {
            let prepared = tokio::time::timeout(FIRST_ATTEMPT, prepare(&first, migrations))
                .await
                .unwrap_or(Err(StoreError::Timeout));
            let _ = sender.send(prepared);
        });
        let first_attempt = receiver.recv().map_err(|_| StoreError::Stopped)?;
        match first_attempt {
            Ok(()) => {
                runtime
                    .handle
                    .spawn(snapshot::poll(context.clone(), timings.poll_interval));
                tracing::info!(store = %location.describe(), "access store open");
            }
            Err(error)
                if when_unreachable == WhenUnreachable::KeepTrying
                    && matches!(location, StoreLocation::Postgres { .. }) =>
            {
                tracing::error!(store = %location.describe(), error = %error,
                    "access store unreachable at start-up: serving without its keys, retrying every 2 s");
                runtime.handle.spawn(keep_preparing(
                    context.clone(),
                    migrations,
                    timings.poll_interval,
                ));
            }
            Err(error) => return Err(error),
        }
        runtime.handle.spawn(usage::write_periodically(
            context.clone(),
            timings.usage_flush_interval,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                context,
                runtime,
            }),
        })
    }

    /// Whether the store was reached and migrated (always, unless opened with `KeepTrying`).
    pub fn is_ready(&self) -> bool {
        self.inner.context.ready.load(Ordering::Acquire)
    }

    pub fn location(&self) -> &StoreLocation {
        &self.inner.location
    }

    /// The latest snapshot (cheap: an `Arc` clone under a read lock).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.context.snapshot.borrow().clone()
    }

    /// Changes of the snapshot, for the key table.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.context.snapshot.subscribe()
    }

    /// Runs a task on the store's runtime until the store drops (the key table's feed).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.runtime.handle.spawn(task);
    }

    /// Reads the snapshot of an existing store without creating, migrating or writing anything
    /// (`llmux check`). `Ok(None)`: there is no store there (no SQLite file, or a database
    /// without llmux's tables).
    pub fn read_existing(location: &StoreLocation) -> Result<Option<Snapshot>, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::DataDir {
                path: PathBuf::from("<runtime>"),
                source,
            })?;
        runtime.block_on(async {
            sqlx::any::install_default_drivers();
            let url = match location {
                StoreLocation::Sqlite { data_dir } => {
                    let file = data_dir.join(SQLITE_FILE);
                    if !file.is_file() {
                        return Ok(None);
                    }
                    format!("sqlite://{}?mode=ro", file.display())
                }
                StoreLocation::Postgres { url } => url.clone(),
            };
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await?;
            let read = tokio::time::timeout(OPERATION_TIMEOUT, async {
                match snapshot::revision(&pool).await {
                    // No revision table: llmux never migrated this database.
                    Err(sqlx::Error::Database(_)) => Ok(None),
                    Err(error) => Err(StoreError::from(error)),
                    Ok(_) => snapshot::load(&pool).await.map(Some),
                }
            })
            .await
            .unwrap_or(Err(StoreError::Timeout));
            pool.close().await;
            read
        })
    }

    /// Runs `work` on the store's runtime, bounded by the operation timeout.
    pub(crate) async fn run<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_ready() {
            return Err(StoreError::NotReady);
        }
        let work = work(self.inner.context.clone());
        self.inner
            .runtime
            .handle
            .spawn(async move {
                tokio::time::timeout(OPERATION_TIMEOUT, work)
                    .await
                    .unwrap_or(Err(StoreError::Timeout))
            })
            .await
            .map_err(|_| StoreError::Stopped)?
    }

    /// Blocks the calling thread on `work` (the CLI: no runtime of its own).
    pub fn block_on<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        let work = work(self.clone());
        self.inner.runtime.handle.spawn(async move {
            let _ = sender.send(work.await);
        });
        receiver.recv().map_err(|_| StoreError::Stopped)?
    }

    /// The most recent audit rows, newest first.
    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.run(move |context| async move {
            let rows = sqlx::query(
                "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&context.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    use sqlx::Row;
                    Ok(AuditEntry {
                        at: row.try_get("at")?,
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        target: row.try_get("target")?,
                        detail: row.try_get("detail")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(StoreError::from)
        })
        .await
    }
}

type Migrations = &'static [(i64, &'static str, &'static str)];

/// The pool, not connected yet (creating the SQLite data dir first).
fn lazy_pool(location: &StoreLocation) -> Result<(AnyPool, Migrations), StoreError> {
    sqlx::any::install_default_drivers();
    let (url, max_connections, migrations) = match location {
        StoreLocation::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
            let file = data_dir.join(SQLITE_FILE);
            (
                format!("sqlite://{}?mode=rwc", file.display()),
                4,
                SQLITE_MIGRATIONS,
            )
        }
        StoreLocation::Postgres { url } => (url.clone(), 8, POSTGRES_MIGRATIONS),
    };
    let mut options = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3));
    if matches!(location, StoreLocation::Sqlite { .. }) {
        // WAL: the revision poll of a server reads while `llmux admin` (another process) writes.
        options = options.after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&mut *connection)
                    .await?;
                Ok(())
            })
        });
    }
    Ok((options.connect_lazy(&url)?, migrations))
}

/// Migrates and publishes the first snapshot; then store calls are allowed.
async fn prepare(context: &Context, migrations: Migrations) -> Result<(), StoreError> {
    let migrator = Migrator::new(Embedded(migrations)).await?;
    migrator.run(&context.pool).await?;
    let first = snapshot::load(&context.pool).await?;
    context.snapshot.send_replace(Arc::new(first));
    context.ready.store(true, Ordering::Release);
    Ok(())
}

/// After a failed start-up: tries again every 2 s, then polls as usual.
async fn keep_preparing(context: Context, migrations: Migrations, poll_interval: Duration) {
    loop {
        tokio::time::sleep(RETRY_INTERVAL).await;
        match tokio::time::timeout(FIRST_ATTEMPT, prepare(&context, migrations)).await {
            Ok(Ok(())) => {
                tracing::info!("access store reachable: its keys are served from now on");
                break;
            }
            Ok(Err(error)) => tracing::warn!(error = %error, "access store still unreachable"),
            Err(_) => tracing::warn!("access store still unreachable (timed out)"),
        }
    }
    snapshot::poll(context, poll_interval).await;
}

/// Migrations are compiled in (the binary needs no files beside it): one list per engine, since
/// their column types differ. Versions only ever get added.
#[derive(Debug)]
struct Embedded(Migrations);

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "access",
    include_str!("../../migrations/sqlite/0001_access.sql"),
)];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "access",
    include_str!("../../migrations/postgres/0001_access.sql"),
)];

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Ends a change: bumps the revision every replica polls for and writes the audit row, in the
/// change's transaction.
pub(crate) async fn finish_change(
    transaction: &mut Transaction<'static, Any>,
    audit: &AuditEntry,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE store_revision SET revision = revision + 1 WHERE id = 1")
        .execute(&mut **transaction)
        .await?;
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(audit.at)
    .bind(&audit.actor)
    .bind(&audit.action)
    .bind(&audit.target)
    .bind(&audit.detail)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default()
}

/// Ids of keys, policies, overrides and endpoints: like a UUIDv7, 48 bits of milliseconds then
/// 80 random bits, in hex, so ids sort in creation order (to the millisecond).
pub(crate) fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes[6..])
        .map_err(|error| StoreError::BadRow(format!("no OS randomness: {error}")))?;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default();
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Who made a change, for the audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub(crate) fn audit(
        &self,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            at: now(),
            actor: self.0.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_string(),
        }
    }
}
