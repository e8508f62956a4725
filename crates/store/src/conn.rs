//! A libSQL connection whose cursor reads never share a server stream with the statement that
//! follows them.
//!
//! Why: sqld (libsql-server) answers a cursor request by releasing the stream's baton at once
//! and streaming rows from a task; when the client stops reading (libSQL's client stops at the
//! step's end, or at the one row a scalar read wants), the task is aborted, and its drop guard
//! sets the *stream connection's* cancel flag. If the client's next statement on that stream
//! has already started, that flag interrupts it: `SQLITE_INTERRUPT` on a statement nobody
//! cancelled (seen under load with four instances rolling up one database). So on a remote
//! store every `query` runs on a stream of its own; statements sent with `execute` and batches
//! (answered whole, never aborted) stay on the connection's own stream. A read transaction
//! must keep its statements on its one stream; it is run again when the server interrupts it
//! ([`retry_interrupted`]).

use crate::StoreError;
use libsql::params::IntoParams;
use libsql::{Connection, Database, Rows};
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

/// Times a read interrupted by the server is run again before the interruption is returned.
const INTERRUPT_RETRIES: u32 = 3;

/// A connection of the store: local, a plain libSQL connection; remote, one whose queries
/// each get a fresh stream.
pub(crate) struct Conn {
    inner: Connection,
    /// The remote database, to open a stream per query (`None`: local).
    remote: Option<Arc<Database>>,
    /// Streams opened for queries, kept until the connection goes, so none is closed while
    /// its rows are still being read.
    spent: parking_lot::Mutex<Vec<Connection>>,
}

impl Conn {
    /// Wraps `inner`; `remote` is the database it was opened from when that is a server.
    pub(crate) fn new(inner: Connection, remote: Option<Arc<Database>>) -> Self {
        Self {
            inner,
            remote,
            spent: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// A connection whose queries all stay on its one stream (a read transaction's).
    pub(crate) fn on_one_stream(inner: Connection) -> Self {
        Self::new(inner, None)
    }

    /// Runs a statement that returns rows (remote: on a stream of its own, see the module).
    pub(crate) async fn query(&self, sql: &str, params: impl IntoParams) -> libsql::Result<Rows> {
        let Some(db) = &self.remote else {
            return self.inner.query(sql, params).await;
        };
        let stream = db.connect()?;
        let rows = stream.query(sql, params).await;
        self.spent.lock().push(stream);
        rows
    }
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.inner
    }
}

/// Runs `read` (a read that may be repeated) again when a libSQL server interrupted it, at
/// most [`INTERRUPT_RETRIES`] times: nothing of ours interrupts a remote statement, so an
/// interruption is the server's cursor race described in the module, and the next try runs
/// on fresh streams.
pub(crate) async fn retry_interrupted<T, F, Fut>(mut read: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match read().await {
            Err(e) if e.is_remote_interrupt() && tries < INTERRUPT_RETRIES => tries += 1,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sqld as sqld;
    use crate::Location;

    async fn count(conn: &Conn) -> i64 {
        let mut rows = conn.query("SELECT COUNT(*) FROM t", ()).await.unwrap();
        rows.next().await.unwrap().unwrap().get(0).unwrap()
    }

    /// What the fix rests on: a remote query runs on a stream of its own, so it does not see
    /// the connection's open transaction (a pinned connection's query does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_queries_run_on_streams_of_their_own_unless_pinned() {
        if !sqld::Sqld::available() {
            return;
        }
        let server = sqld::Sqld::start();
        let db = Arc::new(
            Location::parse(&server.url, None)
                .unwrap()
                .build()
                .await
                .unwrap(),
        );
        let conn = Conn::new(db.connect().unwrap(), Some(db.clone()));
        conn.execute("CREATE TABLE t (x)", ()).await.unwrap();
        conn.execute("BEGIN", ()).await.unwrap();
        conn.execute("INSERT INTO t VALUES (1)", ()).await.unwrap();
        assert_eq!(
            count(&conn).await,
            0,
            "a query saw another stream's transaction"
        );
        let pinned = Conn::on_one_stream((*conn).clone());
        assert_eq!(count(&pinned).await, 1, "a pinned query left its stream");
        conn.execute("COMMIT", ()).await.unwrap();
        assert_eq!(count(&conn).await, 1);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("interrupted")]
    struct Interrupted {
        code: &'static str,
    }

    fn interrupted() -> StoreError {
        StoreError::Db {
            context: "read",
            source: libsql::Error::Hrana(Box::new(Interrupted {
                code: "SQLITE_INTERRUPT",
            })),
        }
    }

    #[tokio::test]
    async fn an_interrupted_read_is_run_again_a_bounded_number_of_times() {
        let mut tries = 0;
        let out = retry_interrupted(|| {
            tries += 1;
            let fail = tries <= 2;
            async move {
                if fail {
                    Err(interrupted())
                } else {
                    Ok(tries)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 3);

        let mut tries = 0;
        let out: Result<(), _> = retry_interrupted(|| {
            tries += 1;
            async { Err(interrupted()) }
        })
        .await;
        assert!(out.unwrap_err().is_remote_interrupt());
        assert_eq!(tries, 1 + INTERRUPT_RETRIES);

        // Other errors are not retried.
        let mut tries = 0;
        let out: Result<(), _> = retry_interrupted(|| {
            tries += 1;
            async { Err(StoreError::InvalidQuery("no".into())) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(tries, 1);
    }
}
