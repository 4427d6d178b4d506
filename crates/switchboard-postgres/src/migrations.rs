//! The schema, as numbered migrations applied in order at start (each in
//! its own transaction, under an advisory lock so nodes starting together
//! apply it once), and the status `switchboard check-config` reports.

use tokio_postgres::Client;

/// One step of the schema. A step is never edited once released: a change
/// is a new step (its checksum is recorded, and a mismatch is reported).
pub(crate) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "history",
        sql: r#"
-- One row per channel with a stream in the database: its epoch and latest
-- offset. Offsets are assigned by updating this row in the transaction that
-- stores the publications, so they are contiguous whatever the concurrency.
CREATE TABLE sb_channels (
    channel    text PRIMARY KEY,
    namespace  text NOT NULL,
    epoch      text NOT NULL,
    top        bigint NOT NULL,
    touched_at timestamptz NOT NULL
);
CREATE INDEX sb_channels_touched ON sb_channels (touched_at);

-- Stored publications; `expires_at` is fixed at insert from the namespace's
-- TTL, so the sweep deletes expired rows through one index whatever the
-- number of channels.
CREATE TABLE sb_publications (
    channel    text NOT NULL,
    off        bigint NOT NULL,
    at         timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    sender     text,
    data       bytea NOT NULL,
    PRIMARY KEY (channel, off)
);
CREATE INDEX sb_publications_expiry ON sb_publications (expires_at);
"#,
    },
    Migration {
        version: 2,
        name: "cursors",
        sql: r#"
-- Inbox cursors (PROTOCOL §10): per channel and device, the offset of the
-- epoch it acknowledged. An upsert moves it, forward only within an epoch;
-- `expires_at` (its last advance plus the inbox's TTL) lets the sweep delete
-- forgotten cursors through one index.
CREATE TABLE sb_cursors (
    channel     text NOT NULL,
    device      text NOT NULL,
    epoch       text NOT NULL,
    off         bigint NOT NULL,
    advanced_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (channel, device)
);
CREATE INDEX sb_cursors_expiry ON sb_cursors (expires_at);
"#,
    },
];

/// The table that records which steps were applied.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS switchboard_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Serializes nodes applying migrations at once (any constant of our own).
const LOCK_KEY: i64 = 0x5b_0a_7d_00_01;

fn checksum(sql: &str) -> String {
    // FNV-1a: a stable fingerprint, not a security measure.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the database's schema stands against this build's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied, in order.
    pub applied: Vec<i32>,
    /// `version name` of the steps this build would apply at start.
    pub pending: Vec<String>,
    /// What this build cannot work with: a step applied with other SQL
    /// than this build's, or a version this build does not know (a newer
    /// build migrated the database).
    pub failed: Vec<String>,
}

impl MigrationStatus {
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "schema version {}",
            self.applied.last().copied().unwrap_or(0)
        )?;
        if !self.pending.is_empty() {
            write!(
                f,
                "; pending migrations (applied at start): {}",
                self.pending.join(", ")
            )?;
        }
        if !self.failed.is_empty() {
            write!(f, "; failed: {}", self.failed.join("; "))?;
        }
        Ok(())
    }
}

/// Reads the status without changing anything.
pub(crate) async fn status(client: &Client) -> Result<MigrationStatus, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('switchboard_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let rows = if exists {
        client
            .query(
                "SELECT version, checksum FROM switchboard_migrations ORDER BY version",
                &[],
            )
            .await?
    } else {
        Vec::new()
    };
    let mut st = MigrationStatus::default();
    for row in &rows {
        let version: i32 = row.get(0);
        let sum: String = row.get(1);
        st.applied.push(version);
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) if checksum(m.sql) != sum => st.failed.push(format!(
                "migration {version} ({}) was applied with other SQL than this build's",
                m.name
            )),
            Some(_) => {}
            None => st.failed.push(format!(
                "migration {version} is unknown to this build (a newer switchboard migrated \
                 this database)"
            )),
        }
    }
    st.pending = MIGRATIONS
        .iter()
        .filter(|m| !st.applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.name))
        .collect();
    Ok(st)
}

/// Applies every pending step; refuses a database in a state this build
/// cannot work with.
pub(crate) async fn apply(client: &mut Client) -> Result<MigrationStatus, String> {
    let e = |e: tokio_postgres::Error| format!("migrating: {}", crate::describe(&e));
    client.batch_execute(CREATE_TABLE).await.map_err(e)?;
    for m in MIGRATIONS {
        let tx = client.transaction().await.map_err(e)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(e)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM switchboard_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(e)?
            .is_some();
        if done {
            tx.rollback().await.map_err(e)?;
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|err| {
            format!(
                "migration {} ({}) failed: {}",
                m.version,
                m.name,
                crate::describe(&err)
            )
        })?;
        tx.execute(
            "INSERT INTO switchboard_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    let st = status(client).await.map_err(e)?;
    if !st.is_ok() {
        return Err(st.failed.join("; "));
    }
    Ok(st)
}
