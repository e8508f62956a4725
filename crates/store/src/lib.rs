//! libSQL storage for luametrics (docs/data-model.md): versioned migrations, the `metrics` window rows, the
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

#![deny(missing_docs)]

mod batch;
mod conn;
mod error;
mod file;
mod location;
mod query;
mod rollup;
mod row;
mod schema;
mod tokens;
mod traces;
mod write;

/// The real libSQL server the remote unit tests run against.
#[cfg(test)]
#[path = "../../../tests/common/sqld.rs"]
mod test_sqld;

pub use error::StoreError;
pub use location::Location;
pub use query::{Agg, AggregateQuery, FindQuery, NameInfo, Series, Tier, MAX_FILTERS};
pub use rollup::{Retention, RetentionReport, RollupReport};
pub use row::{RowData, StoredRow, WindowRow};
pub use traces::{SpanRecord, TraceRecord};
pub use write::BatchWrite;

use libsql::{Connection, Database};
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;

pub use file::FileFault;

/// How long a connection waits on a lock held by another writer before reporting `busy`.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How long a remote write waits for the server's answer unless the host sets another bound.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The open database and its writer, replaced together when the file is recreated.
struct Handle {
    db: std::sync::Arc<Database>,
    /// All writes go through one connection: SQLite has one writer anyway, and a single
    /// connection keeps transactions from interleaving.
    writer: conn::Conn,
    /// Identity of the file this handle opened (local stores), to notice a deleted or
    /// replaced file: SQLite keeps writing into an unlinked inode without an error.
    identity: Option<file::Identity>,
}

/// An open luametrics database (embedded file or remote libSQL server).
///
/// Every libSQL call of a local store runs off tokio's async workers (libSQL's local calls are
/// synchronous under their async API, and a lock wait sleeps for up to the busy timeout): on a
/// multi-threaded runtime the calling worker hands its other tasks to another thread first
/// (`block_in_place`), so no request waits behind a flush, a query or a lock.
pub struct Store {
    handle: Mutex<Handle>,
    /// A clone of the current database, for readers that must not wait on the writer lock.
    db: parking_lot::RwLock<std::sync::Arc<Database>>,
    /// The open file's identity, readable without waiting for the writer.
    identity: parking_lot::Mutex<Option<file::Identity>>,
    location: Location,
    busy_timeout: Duration,
    /// The writer's lock wait in ms (`set_write_wait`), kept so a recreated writer has it too.
    write_wait_ms: std::sync::atomic::AtomicU64,
    /// Traces written into the file now open (lost with it if it is deleted).
    pub(crate) file_traces: std::sync::atomic::AtomicU64,
    /// This process's name in a fleet, written with every metric row (`set_instance`).
    instance: parking_lot::RwLock<Option<std::sync::Arc<str>>>,
    /// How long a remote write waits for its answer, in ms (`set_remote_timeout`).
    remote_timeout_ms: std::sync::atomic::AtomicU64,
    /// Reads asked for by hosts and HTTP clients running at once (`set_read_limits`): each
    /// holds a thread while it runs, so a flood of queries waits here, asynchronously and
    /// cancellably, instead of taking every thread of the process.
    reads: parking_lot::RwLock<std::sync::Arc<tokio::sync::Semaphore>>,
    /// Each tenant's places among them (half, at least one), taken first, so one tenant's
    /// reads never take every place: its surplus waits in its own line, not in everyone's.
    tenant_reads: parking_lot::Mutex<
        std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>,
    >,
    /// Places per tenant (`set_read_limits`).
    reads_per_tenant: std::sync::atomic::AtomicUsize,
    /// How long such a read may run before it is interrupted, in ms (`set_read_limits`).
    read_timeout_ms: std::sync::atomic::AtomicU64,
}

/// Reads allowed at once by default: one per core of a small machine.
pub const DEFAULT_CONCURRENT_READS: usize = 2;
/// How long a read may run by default before it is interrupted.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The caller's deadline (see [`with_deadline`]).
    static DEADLINE: tokio::time::Instant;
}

/// Runs `fut` with a deadline its reads keep: a local read still running at the deadline is
/// interrupted ([`StoreError::ReadTimeout`]) even when the read timeout is longer. A local
/// read runs on its caller's thread (taken off the async workers), where a timeout around the
/// caller cannot stop it: the caller hands its deadline down instead (the HTTP server does,
/// with each request's `request_timeout_ms`).
pub async fn with_deadline<F: Future>(deadline: tokio::time::Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

tokio::task_local! {
    /// The read in progress on this task (see [`Store::gated_read`]): the connections it
    /// opened, for the deadline to interrupt.
    static READ: std::sync::Arc<ReadWatch>;
}

/// What a gated read's deadline acts on.
#[derive(Default)]
struct ReadWatch {
    conns: parking_lot::Mutex<Vec<Connection>>,
    fired: std::sync::atomic::AtomicBool,
}

/// A tenant's place among the reads, or its wait for one; its line is forgotten when nobody
/// holds or waits in it. (The line is referenced by the map and once by each read holding or
/// waiting for one of its places: what `tenant_place` counts.) A wait given up (its caller
/// dropped) leaves the line like a place given back, so lines of cancelled reads never stay.
struct TenantPlace<'a> {
    store: &'a Store,
    tenant: String,
    line: std::sync::Arc<tokio::sync::Semaphore>,
    /// Whether the place is taken (its permit forgotten, given back on drop).
    holding: bool,
}

impl Drop for TenantPlace<'_> {
    fn drop(&mut self) {
        if self.holding {
            self.line.add_permits(1);
        }
        let mut lines = self.store.tenant_reads.lock();
        // The map's reference and this one: nobody else holds or waits in the line.
        if std::sync::Arc::strong_count(&self.line) == 2
            && lines
                .get(&self.tenant)
                .is_some_and(|l| std::sync::Arc::ptr_eq(l, &self.line))
        {
            lines.remove(&self.tenant);
        }
    }
}

/// Reads of one tenant that may wait for its places at once; past them a read is refused
/// (`ReadBusy`). A dashboard page draws its panels at once: well within it.
pub const MAX_TENANT_READS_WAITING: usize = 32;

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

thread_local! {
    /// Set while this thread runs a store call off the workers, so nested calls run inline.
    static OFF_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub async fn open(location: Location) -> Result<Self, StoreError> {
        Self::open_with(location, DEFAULT_BUSY_TIMEOUT).await
    }

    /// Like [`Store::open`], with the time a write waits on another writer's lock.
    pub async fn open_with(location: Location, busy_timeout: Duration) -> Result<Self, StoreError> {
        Self::open_bounded(location, busy_timeout, DEFAULT_REMOTE_TIMEOUT).await
    }

    /// Like [`Store::open_with`], with the bound on remote calls
    /// ([`Store::set_remote_timeout`]) set from the start: opening a remote database (its
    /// migrations) is bounded by it too.
    pub async fn open_bounded(
        location: Location,
        busy_timeout: Duration,
        remote_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let remote_timeout = remote_timeout.max(Duration::from_millis(1));
        let open = Self::open_handle(&location, busy_timeout);
        let opened = if location.is_local() {
            off_worker(true, open).await
        } else {
            bounded(remote_timeout, "opening the remote database", open).await
        }
        .map_err(|e| e.opening(&location))?;
        let db = opened.db.clone();
        Ok(Self {
            identity: parking_lot::Mutex::new(opened.identity),
            handle: Mutex::new(opened),
            db: parking_lot::RwLock::new(db),
            location,
            busy_timeout,
            write_wait_ms: (busy_timeout.as_millis() as u64).into(),
            file_traces: 0.into(),
            instance: parking_lot::RwLock::new(None),
            remote_timeout_ms: (remote_timeout.as_millis().max(1) as u64).into(),
            reads: parking_lot::RwLock::new(std::sync::Arc::new(tokio::sync::Semaphore::new(
                DEFAULT_CONCURRENT_READS,
            ))),
            read_timeout_ms: (DEFAULT_READ_TIMEOUT.as_millis() as u64).into(),
            tenant_reads: Default::default(),
            reads_per_tenant: (DEFAULT_CONCURRENT_READS / 2).max(1).into(),
        })
    }

    /// Opens the database and its writer (whose lock wait is `write_wait`), and migrates it.
    async fn open_handle(location: &Location, write_wait: Duration) -> Result<Handle, StoreError> {
        let db = std::sync::Arc::new(location.build().await?);
        let writer = conn::Conn::new(
            Self::connect_db(&db, location, write_wait).await?,
            (!location.is_local()).then(|| db.clone()),
        );
        schema::migrate(&writer).await?;
        let identity = match location {
            Location::File(path) => {
                Some(
                    file::Identity::of(path).map_err(|reason| StoreError::Unwritable {
                        path: path.display().to_string(),
                        reason: reason.to_string(),
                    })?,
                )
            }
            Location::Remote { .. } => None,
        };
        Ok(Handle {
            db,
            writer,
            identity,
        })
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

    /// Runs a store call off the async workers (local stores on a multi-threaded runtime); a
    /// remote call is bounded by the remote timeout, so a server that accepts connections but
    /// never answers fails the call instead of holding its caller for good.
    pub(crate) async fn off_worker<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.remote_bound() {
            Some(bound) => bounded(bound, "a call to the remote database", fut).await,
            None => off_worker(true, fut).await,
        }
    }

    /// Like [`Store::off_worker`] for calls made of many steps (rollup, retention), each of
    /// which bounds its own remote calls with [`Store::bounded`]: the whole may take long.
    pub(crate) async fn off_worker_steps<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        off_worker(self.location.is_local(), fut).await
    }

    /// Bounds one remote step by the remote timeout (local steps run as they are).
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.remote_bound() {
            Some(bound) => bounded(bound, what, fut).await,
            None => fut.await,
        }
    }

    /// The writer connection, after checking that the file it writes is still the one at the
    /// path: a deleted or replaced file is a write failure, not a silent loss.
    pub(crate) async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Handle>, StoreError> {
        let handle = self.handle.lock().await;
        if let (Location::File(path), Some(id)) = (&self.location, &handle.identity) {
            id.check(path)?;
        }
        Ok(handle)
    }

    /// A fresh connection for reads, so long queries never hold the writer. Never creates the
    /// file: a reader of a deleted database gets an error, not a new empty file.
    pub(crate) async fn reader(&self) -> Result<conn::Conn, StoreError> {
        let database = self.db.read().clone();
        let db = database.connect().map_err(StoreError::db("connect"))?;
        if let Location::File(path) = &self.location {
            if !path.exists() {
                return Err(StoreError::Gone {
                    path: path.display().to_string(),
                    fault: FileFault::Deleted,
                });
            }
        }
        Self::configure(&db, &self.location, self.busy_timeout).await?;
        // Inside a gated read, its deadline may interrupt this connection.
        let _ = READ.try_with(|watch| watch.conns.lock().push(db.clone()));
        Ok(conn::Conn::new(
            db,
            (!self.location.is_local()).then_some(database),
        ))
    }

    async fn configure(
        conn: &Connection,
        location: &Location,
        busy_timeout: Duration,
    ) -> Result<(), StoreError> {
        if location.is_local() {
            conn.busy_timeout(busy_timeout)
                .map_err(StoreError::db("set busy_timeout"))?;
        }
        Ok(())
    }

    /// Names this process in a fleet sharing one database: every metric row it writes carries
    /// the name (`metrics.instance`), so rows of the same series and window from different
    /// instances stay apart and can be traced to their writer.
    pub fn set_instance(&self, instance: impl Into<String>) {
        let name: String = instance.into();
        *self.instance.write() = (!name.is_empty()).then(|| name.into());
    }

    /// Bounds every remote write (flush, trace batch, rollup, token): a server that stops
    /// answering fails the write with [`StoreError::TimedOut`] after `timeout` instead of
    /// holding the writer, and with it every later write, for good.
    pub fn set_remote_timeout(&self, timeout: Duration) {
        self.remote_timeout_ms.store(
            timeout.as_millis().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Bounds the reads hosts and HTTP clients ask for (queries, names, traces, usage): at
    /// most `concurrent` run at once (the others wait without holding a thread), and one
    /// running longer than `timeout` on a local store is interrupted
    /// ([`StoreError::ReadTimeout`]). Remote reads are bounded by the remote timeout instead.
    pub fn set_read_limits(&self, concurrent: usize, timeout: Duration) {
        *self.reads.write() = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrent.max(1)));
        self.reads_per_tenant.store(
            (concurrent / 2).max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.read_timeout_ms.store(
            timeout.as_millis().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Runs a read a host or a client asked for: after a place among the reads allowed at
    /// once (waited for asynchronously: a caller that goes away stops waiting), for a
    /// tenant's read after one of the tenant's own places first, off the async workers like
    /// every store call, and, on a local store, interrupted past the read timeout (a
    /// multi-threaded runtime's other workers run the deadline), or at the caller's deadline
    /// ([`with_deadline`]) if that comes first.
    pub(crate) async fn gated_read<T>(
        &self,
        tenant: Option<&str>,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // A read inside a read (one store read made of others) runs in the outer one's place,
        // deadline and thread: waiting for a second place while holding one, inside the
        // blocking section where the caller's timeout cannot cancel the wait, froze every read
        // for good once two such reads held the only two places (adversary round 23).
        if READ.try_with(|_| ()).is_ok() {
            return fut.await;
        }
        let _tenant_place = match tenant {
            Some(t) => Some(self.tenant_place(t).await?),
            None => None,
        };
        let gate = self.reads.read().clone();
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| StoreError::InvalidQuery("the store is closed".into()))?;
        if !self.location.is_local() {
            // In a read's scope too, so a read inside it runs in its place (see above).
            let watch = std::sync::Arc::new(ReadWatch::default());
            return READ.scope(watch, self.off_worker(fut)).await;
        }
        let mut limit_ms = self
            .read_timeout_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(deadline) = DEADLINE.try_with(|d| *d) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            limit_ms = limit_ms.min((left.as_millis() as u64).max(1));
        }
        let watch = std::sync::Arc::new(ReadWatch::default());
        let _deadline = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let watch = watch.clone();
            AbortOnDrop(rt.spawn(async move {
                tokio::time::sleep(Duration::from_millis(limit_ms)).await;
                watch.fired.store(true, std::sync::atomic::Ordering::SeqCst);
                // Again and again: an interrupt between two statements of the read is lost.
                loop {
                    for conn in watch.conns.lock().iter() {
                        let _ = conn.interrupt();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }))
        });
        let out = READ.scope(watch.clone(), self.off_worker(fut)).await;
        match out {
            Err(_) if watch.fired.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(StoreError::ReadTimeout { after_ms: limit_ms })
            }
            other => other,
        }
    }

    /// One of `tenant`'s places among the reads (see `tenant_reads`); `ReadBusy` at once when
    /// [`MAX_TENANT_READS_WAITING`] of its reads wait already (adversary round 12: a tenant's
    /// pipelined reads on 1,024 connections all waited for its one place, so no connection
    /// was ever idle and no new client, `/healthz` included, could get one).
    async fn tenant_place(&self, tenant: &str) -> Result<TenantPlace<'_>, StoreError> {
        let line = {
            let mut lines = self.tenant_reads.lock();
            let places = self
                .reads_per_tenant
                .load(std::sync::atomic::Ordering::Relaxed);
            let line = lines
                .entry(tenant.to_string())
                .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(places)));
            // The map's reference, and one per read running or waiting.
            let in_line = std::sync::Arc::strong_count(line) - 1;
            if in_line >= places + MAX_TENANT_READS_WAITING {
                return Err(StoreError::ReadBusy { in_line });
            }
            line.clone()
        };
        let mut place = TenantPlace {
            store: self,
            tenant: tenant.to_string(),
            line,
            holding: false,
        };
        place
            .line
            .acquire()
            .await
            .map_err(|_| StoreError::InvalidQuery("the store is closed".into()))?
            .forget();
        place.holding = true;
        Ok(place)
    }

    /// Writes `inserts` then `tail` all or nothing (see `batch::write_atomically`). A remote
    /// write goes on a fresh connection: one self-contained request, with no stream state
    /// that a lost answer could leave in doubt and no lock shared with other writers (the
    /// server orders them). A local write goes through the one writer connection.
    pub(crate) async fn write_batch(
        &self,
        inserts: Vec<batch::Insert<'_>>,
        tail: &str,
    ) -> Result<(), StoreError> {
        match self.remote_bound() {
            Some(bound) => {
                let conn = self.reader().await?;
                batch::write_atomically(&conn, Some(bound), inserts, tail).await
            }
            None => {
                let handle = self.writer().await?;
                batch::write_atomically(&handle.writer, None, inserts, tail).await
            }
        }
    }

    /// `Some(bound)` for remote stores: how long a write may wait for the server.
    pub(crate) fn remote_bound(&self) -> Option<Duration> {
        (!self.location.is_local()).then(|| {
            Duration::from_millis(
                self.remote_timeout_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// The name given by [`Store::set_instance`].
    pub fn instance(&self) -> Option<std::sync::Arc<str>> {
        self.instance.read().clone()
    }

    /// How long connections wait on another connection's lock (`database.busy_timeout_ms`).
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Checks that the database file at the path is the one this store writes (local stores):
    /// `Err(Gone)` when it was deleted or replaced since it was opened.
    pub async fn check_file(&self) -> Result<(), StoreError> {
        if !self.location.is_local() {
            return Ok(());
        }
        self.writer().await.map(|_| ())
    }

    /// What happened to the database file, if it is no longer the one this store opened (a
    /// `stat` of the path; never waits for the writer, never creates a file).
    pub fn file_fault(&self) -> Option<FileFault> {
        let Location::File(path) = &self.location else {
            return None;
        };
        let id = (*self.identity.lock())?;
        match id.check(path) {
            Ok(()) => None,
            Err(StoreError::Gone { fault, .. }) => Some(fault),
            Err(_) => Some(FileFault::Deleted),
        }
    }

    /// Takes the count of traces written into the file now open since it was opened or last
    /// taken: when the file was deleted or replaced, they are lost with it.
    pub fn take_file_traces(&self) -> u64 {
        self.file_traces
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Recreates the database at its path after the file was deleted or replaced: a new file,
    /// migrated, becomes the one every later write and read uses. Local stores only. Returns
    /// whether it recreated anything (`false`: the file open is still the one at the path).
    pub async fn reopen(&self) -> Result<bool, StoreError> {
        self.off_worker(async {
            let mut handle = self.handle.lock().await;
            let Location::File(path) = &self.location else {
                return Ok(false);
            };
            if let Some(id) = &handle.identity {
                if id.check(path).is_ok() {
                    return Ok(false);
                }
            }
            // The recreated writer keeps the lock wait the recorder set (shutdown's deadline
            // depends on it).
            let wait = Duration::from_millis(
                self.write_wait_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            let fresh = Self::open_handle(&self.location, wait)
                .await
                .map_err(|e| e.opening(&self.location))?;
            *self.db.write() = fresh.db.clone();
            *self.identity.lock() = fresh.identity;
            *handle = fresh;
            Ok(true)
        })
        .await
    }

    /// How long the writer waits on another connection's lock before a write fails with
    /// `busy`; the recorder shortens it so shutdown keeps its deadline during a lock.
    pub async fn set_write_wait(&self, wait: Duration) -> Result<(), StoreError> {
        if !self.location.is_local() {
            return Ok(());
        }
        self.write_wait_ms.store(
            wait.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let handle = self.handle.lock().await;
        handle
            .writer
            .busy_timeout(wait)
            .map_err(StoreError::db("set busy_timeout"))
    }

    /// Moves the write-ahead log into the database file and truncates it
    /// (`wal_checkpoint(TRUNCATE)`), so the log cannot grow until it fills a small volume.
    /// Returns whether the checkpoint completed (`false`: readers or a lock kept part of it).
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        if !self.location.is_local() {
            return Ok(true);
        }
        self.off_worker(async {
            let handle = self.writer().await?;
            let mut rows = handle
                .writer
                .query("PRAGMA wal_checkpoint(TRUNCATE)", ())
                .await
                .map_err(StoreError::db("checkpoint the write-ahead log"))?;
            let mut busy = false;
            while let Some(row) = rows
                .next()
                .await
                .map_err(StoreError::db("checkpoint the write-ahead log"))?
            {
                busy |= row.get::<i64>(0).unwrap_or(1) != 0;
            }
            Ok(!busy)
        })
        .await
    }

    /// Makes the writer refuse writes (`PRAGMA query_only`), as a read-only database would;
    /// lets tests exercise the recorder's retry path. Local databases only. A test hook, not
    /// part of the API.
    #[doc(hidden)]
    pub async fn set_query_only(&self, on: bool) -> Result<(), StoreError> {
        let sql = if on {
            "PRAGMA query_only=ON"
        } else {
            "PRAGMA query_only=OFF"
        };
        self.writer_pragma(sql, "set query_only").await
    }

    /// Caps the database file at `pages` pages (`PRAGMA max_page_count`; `None` lifts the
    /// cap): writes past it fail as on a full disk. Lets operators and tests rehearse a full
    /// volume without filling one. Local databases only.
    pub async fn set_max_pages(&self, pages: Option<u64>) -> Result<(), StoreError> {
        let sql = format!("PRAGMA max_page_count={}", pages.unwrap_or(4_294_967_294));
        self.writer_pragma(&sql, "set max_page_count").await
    }

    async fn writer_pragma(&self, sql: &str, context: &'static str) -> Result<(), StoreError> {
        self.off_worker(async {
            let handle = self.handle.lock().await;
            let mut rows = handle
                .writer
                .query(sql, ())
                .await
                .map_err(StoreError::db(context))?;
            while rows
                .next()
                .await
                .map_err(StoreError::db(context))?
                .is_some()
            {}
            Ok(())
        })
        .await
    }

    /// Number of rows in `metrics` (all windows, all series).
    pub async fn count_rows(&self) -> Result<u64, StoreError> {
        self.off_worker(async {
            let conn = self.reader().await?;
            query::scalar_i64(&conn, "SELECT COUNT(*) FROM metrics", ())
                .await
                .map(|n| n as u64)
        })
        .await
    }
}

/// `fut`, or `TimedOut` once `bound` has passed without an answer.
async fn bounded<T>(
    bound: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(bound, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::TimedOut {
            what,
            after_ms: bound.as_millis() as u64,
        }),
    }
}

/// Runs `fut` to completion off tokio's async workers when it would block one (a local
/// libSQL call on a multi-threaded runtime); elsewhere (remote calls, which really are async,
/// or a current-thread runtime that the host chose) it is awaited in place.
async fn off_worker<T>(local: bool, fut: impl Future<Output = T>) -> T {
    use tokio::runtime::{Handle as Rt, RuntimeFlavor};
    if local && !OFF_WORKER.with(|f| f.get()) {
        if let Ok(rt) = Rt::try_current() {
            if rt.runtime_flavor() == RuntimeFlavor::MultiThread {
                return tokio::task::block_in_place(|| {
                    /// Clears the flag however the call ends (a panic included).
                    struct Reset;
                    impl Drop for Reset {
                        fn drop(&mut self) {
                            OFF_WORKER.with(|f| f.set(false));
                        }
                    }
                    OFF_WORKER.with(|f| f.set(true));
                    let _reset = Reset;
                    rt.block_on(fut)
                });
            }
        }
    }
    fut.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::Poll;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(
            Location::File(dir.path().join("m.db")),
            DEFAULT_BUSY_TIMEOUT,
        )
        .await
        .unwrap();
        (dir, store)
    }

    type Waiting<'a> = Pin<Box<dyn Future<Output = Result<TenantPlace<'a>, StoreError>> + 'a>>;

    /// Polls each wait once: all of them must be waiting.
    async fn all_waiting(waiting: &mut [Waiting<'_>]) {
        std::future::poll_fn(|cx| {
            for w in waiting.iter_mut() {
                assert!(w.as_mut().poll(cx).is_pending(), "a read did not wait");
            }
            Poll::Ready(())
        })
        .await
    }

    // A tenant's reads wait in a bounded line (adversary round 12), deterministically: with its
    // one place held and 32 reads waiting, the next is refused at once, another tenant's is
    // not; a wait given up makes room again.
    #[tokio::test]
    async fn a_tenants_line_is_bounded_and_other_tenants_pass() {
        let (_dir, store) = store().await;
        store.set_read_limits(2, Duration::from_secs(60));
        let held = store.tenant_place("acme").await.unwrap();
        let mut waiting: Vec<Waiting<'_>> = (0..MAX_TENANT_READS_WAITING)
            .map(|_| Box::pin(store.tenant_place("acme")) as Waiting<'_>)
            .collect();
        all_waiting(&mut waiting).await;
        match store.tenant_place("acme").await {
            Err(StoreError::ReadBusy { in_line }) => {
                assert_eq!(in_line, 1 + MAX_TENANT_READS_WAITING)
            }
            other => panic!("{:?}", other.err()),
        }
        drop(store.tenant_place("globex").await.unwrap());
        waiting.pop();
        let again = Box::pin(store.tenant_place("acme")) as Waiting<'_>;
        waiting.push(again);
        all_waiting(&mut waiting).await;
        drop(held);
        drop(waiting);
        assert!(store.tenant_reads.lock().is_empty());
    }

    // Reviewer finding: a read that gave up waiting for its tenant's place (its caller went
    // away) after the place had been given back left the tenant's line in the map for good:
    // one entry per tenant id whose read was cancelled.
    #[tokio::test]
    async fn a_wait_given_up_leaves_no_line_behind() {
        let (_dir, store) = store().await;
        store.set_read_limits(2, Duration::from_secs(60));
        let held = store.tenant_place("acme").await.unwrap();
        let mut waiting: Vec<Waiting<'_>> = (0..3)
            .map(|_| Box::pin(store.tenant_place("acme")) as Waiting<'_>)
            .collect();
        all_waiting(&mut waiting).await;
        // The place goes to the first wait, which is given up before it is polled again.
        drop(held);
        drop(waiting);
        assert!(store.tenant_reads.lock().is_empty());
        // And the line works again: its one place is free.
        let place = store.tenant_place("acme").await.unwrap();
        assert_eq!(place.line.available_permits(), 0);
        drop(place);
        assert!(store.tenant_reads.lock().is_empty());
    }

    /// Waits until `n` reads of `tenant` hold or wait for its places (a hang detector's
    /// bound, not a timing check).
    async fn in_line(store: &Store, tenant: &str, n: usize) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                tokio::time::Instant::now() < give_up,
                "{n} reads of {tenant} never got in line"
            );
            let now = store
                .tenant_reads
                .lock()
                .get(tenant)
                .map_or(0, |l| std::sync::Arc::strong_count(l) - 1);
            if now == n {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    // Adversary round 23: a read made of reads (a trace and its spans) waited for a second
    // place while holding one, inside the blocking section where no timeout could cancel the
    // wait: two such reads on two places froze every read of the process for good. A read
    // inside a read runs in its outer one's place: it takes none of the shared places and
    // none of its tenant's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_inside_a_read_runs_in_its_place() {
        let (_dir, store) = store().await;
        store.set_read_limits(2, Duration::from_secs(60));
        let (free, tenants) = store
            .gated_read(None, async {
                store
                    .gated_read(Some("acme"), async {
                        Ok((
                            store.reads.read().available_permits(),
                            store.tenant_reads.lock().len(),
                        ))
                    })
                    .await
            })
            .await
            .unwrap();
        assert_eq!((free, tenants), (1, 0));
    }

    // One tenant's reads take at most half the places: with its read holding its place (held
    // until the test lets it go, so no machine is too fast for this) and ten more waiting,
    // another tenant's read is served, and the first tenant's are all served after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_tenants_read_passes_a_tenants_waiting_reads() {
        let (_dir, store) = store().await;
        let store = std::sync::Arc::new(store);
        store.set_read_limits(2, Duration::from_secs(60));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let long = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .gated_read(Some("acme"), async move {
                        let _ = held.await;
                        Ok(0)
                    })
                    .await
            })
        };
        in_line(&store, "acme", 1).await;
        let waiting: Vec<_> = (1..=10)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.gated_read(Some("acme"), async move { Ok(i) }).await },
                )
            })
            .collect();
        in_line(&store, "acme", 11).await;
        let other = store.gated_read(Some("globex"), async { Ok(99) });
        let other = tokio::time::timeout(Duration::from_secs(60), other).await;
        assert_eq!(
            other
                .expect("the other tenant waited behind the first")
                .unwrap(),
            99
        );
        assert!(!long.is_finished());
        release.send(()).unwrap();
        assert_eq!(long.await.unwrap().unwrap(), 0);
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(w.await.unwrap().unwrap(), i + 1);
        }
        assert!(store.tenant_reads.lock().is_empty());
    }
}
