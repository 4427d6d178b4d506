//! [`PgHistory`]: a [`HistoryStore`] in PostgreSQL. Offsets are assigned in
//! the database (the channel's row is updated in the transaction that stores
//! its publications), concurrent appends share one transaction (group
//! commit), and retention runs in the database (size on append, TTL in the
//! sweep through an index on expiry), so long retention costs disk, not
//! node memory.
//!
//! The role is synchronous (the file store blocks too); the store runs
//! `tokio-postgres` on a small runtime of its own and callers wait on a
//! plain channel, so it can be called from a blocking section of any runtime
//! or from none. Channels whose namespace keeps no history never reach the
//! database: their offsets are counted in memory.
//!
//! PostgreSQL being down is not fatal: the store keeps trying in the
//! background, answers [`HistoryError::Store`] meanwhile and reports itself
//! unhealthy ([`HistoryStore::healthy`]), and serves again once it is back.

mod bridge;
mod commit;
mod cursors;
mod migrations;
mod read;
mod sweep;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use switchboard_core::{
    HistoryError, HistoryQuery, HistoryRead, HistoryStore, MemoryHistory, Retention, Sweep, Swept,
};
use switchboard_protocol::{ChannelName, Publication};

pub use cursors::PgCursors;
pub use migrations::MigrationStatus;
/// The driver, for tests that look into the database.
pub use tokio_postgres;

use bridge::Bridge;
use commit::Committer;

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL or a libpq `key=value` string.
    pub url: String,
    /// Connections kept open (appends use one at a time; reads and the
    /// sweep the others).
    pub pool_size: usize,
    /// Longest wait for a connection, and for one statement.
    pub timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 8,
            timeout: Duration::from_secs(5),
        }
    }

    fn pg_config(&self) -> Result<tokio_postgres::Config, String> {
        let mut c = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| format!("postgres_url: {e}"))?;
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(self.timeout);
        }
        if c.get_application_name().is_none() {
            c.application_name("switchboard");
        }
        Ok(c)
    }
}

/// Why the store is not serving, for logs and errors.
fn store_error(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Store(format!("postgres: {e}"))
}

/// A driver error with the server's message (its `Display` says only
/// "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// What the store's tasks share.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) timeout: Duration,
    /// The schema is migrated and the channel counts are loaded.
    pub(crate) ready: AtomicBool,
    /// The last statement reached PostgreSQL.
    pub(crate) healthy: AtomicBool,
    /// Channels with publications stored, per namespace: what
    /// `Retention::max_channels` is checked against.
    pub(crate) counts: Mutex<HashMap<String, usize>>,
    pub(crate) options: PgOptions,
}

impl Shared {
    pub(crate) fn failed(&self, e: &impl std::fmt::Display) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "postgres unreachable: publishes answer 503 until it is back");
        }
    }

    pub(crate) fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("postgres reached");
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, HistoryError> {
        self.pool.get().await.map_err(|e| {
            self.failed(&e);
            store_error(e)
        })
    }

    pub(crate) fn total_channels(&self) -> usize {
        self.counts.lock().values().sum()
    }
}

/// History in PostgreSQL.
pub struct PgHistory {
    shared: Arc<Shared>,
    bridge: Bridge,
    committer: Committer,
    /// Channels whose namespace keeps no history: offsets only, in memory.
    memory: MemoryHistory,
}

impl std::fmt::Debug for PgHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHistory").finish_non_exhaustive()
    }
}

impl PgHistory {
    /// Starts the store. It does not wait for PostgreSQL: the schema is
    /// migrated as soon as it is reached (see [`PgHistory::wait_ready`]).
    /// Fails only on options that can never work (a malformed URL).
    pub fn open(options: PgOptions) -> Result<PgHistory, String> {
        let pg = options.pg_config()?;
        let bridge = Bridge::new()?;
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| format!("postgres pool: {e}"))?;
        let shared = Arc::new(Shared {
            pool,
            timeout: options.timeout,
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            counts: Mutex::new(HashMap::new()),
            options,
        });
        let committer = Committer::start(&bridge, shared.clone());
        bridge.spawn(supervise(shared.clone()));
        Ok(PgHistory {
            shared,
            bridge,
            committer,
            memory: MemoryHistory::new(),
        })
    }

    /// The inbox cursors beside this history, in the same database.
    pub fn cursors(&self) -> PgCursors {
        PgCursors {
            shared: self.shared.clone(),
            runtime: self.bridge.handle().clone(),
        }
    }

    /// Waits up to `timeout` for the schema to be migrated; the error says
    /// why not.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let until = std::time::Instant::now() + timeout;
        while !self.shared.ready.load(Ordering::Acquire) {
            if std::time::Instant::now() >= until {
                return Err(format!(
                    "postgres not ready after {timeout:?} (unreachable, or its schema failed \
                     to migrate: see the log)"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Connects, migrates and loads the channel counts until it succeeds; then
/// probes PostgreSQL every half second while it is unhealthy, so `/ready`
/// recovers without waiting for a publish.
async fn supervise(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ready = shared.ready.load(Ordering::Acquire);
        if ready && shared.healthy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let step = if ready {
            probe(&shared).await
        } else {
            setup(&shared).await
        };
        match step {
            Ok(()) => {
                shared.succeeded();
                shared.ready.store(true, Ordering::Release);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                shared.failed(&e);
                if !ready {
                    tracing::warn!(error = %e, "postgres history store not ready; retrying");
                }
                let jitter = Duration::from_millis(fastrand::u64(0..100));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn probe(shared: &Shared) -> Result<(), String> {
    let client = shared.pool.get().await.map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| describe(&e))?;
    Ok(())
}

async fn setup(shared: &Shared) -> Result<(), String> {
    // Its own connection: migrations need `&mut Client`.
    let pg = shared.options.pg_config()?;
    let (mut client, conn) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| describe(&e))?;
    let task = tokio::spawn(conn);
    let st = migrations::apply(&mut client).await;
    let counts = match st {
        Ok(_) => client
            .query(
                "SELECT namespace, count(*) FROM sb_channels WHERE top > 0 GROUP BY namespace",
                &[],
            )
            .await
            .map_err(|e| describe(&e)),
        Err(e) => Err(e),
    };
    drop(client);
    let _ = task.await;
    let rows = counts?;
    let mut map = shared.counts.lock();
    map.clear();
    for row in rows {
        let ns: String = row.get(0);
        let n: i64 = row.get(1);
        map.insert(ns, usize::try_from(n).unwrap_or(0));
    }
    Ok(())
}

/// Connects to `options.url` and reports the schema against this build's
/// migrations, changing nothing: what `switchboard check-config` says.
pub fn check(options: &PgOptions) -> Result<MigrationStatus, String> {
    let pg = options.pg_config()?;
    let bridge = Bridge::new()?;
    let timeout = options.timeout;
    bridge
        .run(async move {
            let connect = tokio::time::timeout(timeout, pg.connect(tokio_postgres::NoTls));
            let (client, conn) = connect
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|e| describe(&e))?;
            let task = tokio::spawn(conn);
            let st = migrations::status(&client).await.map_err(|e| describe(&e));
            drop(client);
            let _ = task.await;
            st
        })
        .and_then(|r| r)
}

impl HistoryStore for PgHistory {
    fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<Arc<Publication>, HistoryError> {
        if retention.keeps_nothing() {
            return self.memory.append(channel, data, from, retention);
        }
        if !self.shared.ready.load(Ordering::Acquire) {
            return Err(store_error("not reached yet"));
        }
        self.committer.append(channel, data, from, retention)
    }

    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError> {
        if retention.keeps_nothing() {
            return self.memory.read(channel, query, retention);
        }
        if !self.shared.ready.load(Ordering::Acquire) {
            return Err(store_error("not reached yet"));
        }
        let shared = self.shared.clone();
        let channel = channel.clone();
        let query = query.clone();
        self.bridge
            .run(async move { read::read(&shared, &channel, &query, retention).await })
            .map_err(store_error)?
    }

    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        let mut swept = self.memory.sweep(pass);
        if self.shared.ready.load(Ordering::Acquire) {
            let shared = self.shared.clone();
            let idle = pass.idle;
            let budget = pass.budget;
            match self
                .bridge
                .run(async move { sweep::sweep(&shared, idle, budget).await })
            {
                Ok(Ok(db)) => {
                    swept.examined += db.examined;
                    swept.dropped += db.dropped;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "history sweep failed; the next pass tries again")
                }
                Err(e) => tracing::warn!(error = %e, "history sweep failed"),
            }
        }
        swept.history_channels += self.shared.total_channels();
        swept
    }

    fn blocks(&self) -> bool {
        true
    }

    fn healthy(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && self.shared.healthy.load(Ordering::Acquire)
    }
}
