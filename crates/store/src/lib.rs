//! libSQL storage for luametrics (SPEC §4): versioned migrations, the `metrics` window rows, the
//! hour/day `metric_rollups`, retention, and the `pipeline_traces` / `pipeline_spans` tables.
//!
//! The recorder hands this crate pre-aggregated rows (one per active series per flush window);
//! nothing here sits on a script's hot path. Queries pick the coarsest tier that serves their
//! step and merge sketches for percentiles.
//!
//! Invariants:
//! - `metrics.id` only grows (AUTOINCREMENT); the rollup watermark is the highest id folded into
//!   `metric_rollups`, so late rows are rolled up too and nothing is counted twice.
//! - Retention never deletes a raw row that the rollup has not folded in yet.

mod error;
mod location;
mod query;
mod rollup;
mod row;
mod schema;
mod traces;
mod write;

pub use error::StoreError;
pub use location::Location;
pub use query::{Agg, AggregateQuery, FindQuery, NameInfo, Series, Tier};
pub use rollup::{Retention, RetentionReport, RollupReport};
pub use row::{RowData, StoredRow, WindowRow};
pub use traces::{SpanRecord, TraceRecord};

use libsql::{Connection, Database};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a connection waits on a lock held by another writer before reporting `busy`.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_millis(2_000);

/// An open luametrics database (embedded file or remote libSQL server).
pub struct Store {
    db: Database,
    /// All writes go through one connection: SQLite has one writer anyway, and a single
    /// connection keeps transactions from interleaving.
    writer: Mutex<Connection>,
    location: Location,
    busy_timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub async fn open(location: Location) -> Result<Self, StoreError> {
        Self::open_with(location, DEFAULT_BUSY_TIMEOUT).await
    }

    /// Like [`Store::open`], with the time a write waits on another writer's lock.
    pub async fn open_with(location: Location, busy_timeout: Duration) -> Result<Self, StoreError> {
        let db = location.build().await?;
        let store = Self {
            writer: Mutex::new(Self::connect_db(&db, &location, busy_timeout).await?),
            db,
            location,
            busy_timeout,
        };
        {
            let conn = store.writer.lock().await;
            schema::migrate(&conn).await?;
        }
        Ok(store)
    }

    async fn connect_db(
        db: &Database,
        location: &Location,
        busy_timeout: Duration,
    ) -> Result<Connection, StoreError> {
        let conn = db.connect().map_err(StoreError::db("connect"))?;
        if location.is_local() {
            conn.busy_timeout(busy_timeout)
                .map_err(StoreError::db("set busy_timeout"))?;
            // journal_mode returns a row, so it is a query.
            let mut rows = conn
                .query("PRAGMA journal_mode=WAL", ())
                .await
                .map_err(StoreError::db("enable WAL"))?;
            while rows
                .next()
                .await
                .map_err(StoreError::db("enable WAL"))?
                .is_some()
            {}
            conn.execute("PRAGMA synchronous=NORMAL", ())
                .await
                .map_err(StoreError::db("set synchronous"))?;
        }
        Ok(conn)
    }

    /// A fresh connection for reads, so long queries never hold the writer.
    pub(crate) async fn reader(&self) -> Result<Connection, StoreError> {
        Self::connect_db(&self.db, &self.location, self.busy_timeout).await
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Makes the writer refuse writes (`PRAGMA query_only`), as a read-only database would;
    /// lets hosts and tests exercise the recorder's retry path. Local databases only.
    pub async fn set_query_only(&self, on: bool) -> Result<(), StoreError> {
        let conn = self.writer.lock().await;
        let sql = if on {
            "PRAGMA query_only=ON"
        } else {
            "PRAGMA query_only=OFF"
        };
        conn.execute(sql, ())
            .await
            .map_err(StoreError::db("set query_only"))?;
        Ok(())
    }

    /// Number of rows in `metrics` (all windows, all series).
    pub async fn count_rows(&self) -> Result<u64, StoreError> {
        let conn = self.reader().await?;
        query::scalar_i64(&conn, "SELECT COUNT(*) FROM metrics", ())
            .await
            .map(|n| n as u64)
    }
}
