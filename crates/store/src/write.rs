//! Writing metric rows: the column list, a row's parameters, and the batch writes (one
//! transaction locally, one round trip remotely, exactly once under a batch id).

use crate::batch::Insert;
use crate::{RowData, Store, StoreError, WindowRow};
use libsql::Value;
use luametrics_model::canonical_tags;

/// The columns a flush writes (`instance` last: which instance wrote the row).
const INSERT_HEAD: &str = "INSERT INTO metrics (name, value, tags, metric_type, timestamp,
    service, route_id, client_id, status, tenant_id, kind, source, window_ms, samples, sum, min,
    max, last, last_ts, sketch, instance)";

const INSERT_METRIC: &str = "INSERT INTO metrics (name, value, tags, metric_type, timestamp,
    service, route_id, client_id, status, tenant_id, kind, source, window_ms, samples, sum, min,
    max, last, last_ts, sketch, instance)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)";

fn opt(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

/// A number for a `NOT NULL` REAL column: finite whatever reaches it (SQLite stores NaN as
/// NULL, which would fail the whole all-or-nothing flush and hold every tenant's rows back; an
/// infinite value would turn a later SQL `SUM` into NaN). Summaries saturate their sums already;
/// this is the last line, for a value that escaped that.
pub(crate) fn real(x: f64) -> Value {
    Value::Real(if x.is_nan() {
        0.0
    } else {
        luametrics_sketch::saturate(x)
    })
}

pub(crate) fn metric_params<R: RowData + ?Sized>(row: &R) -> Vec<Value> {
    let [service, route_id, client_id, status] = row.first_class();
    let s = row.summary();
    vec![
        Value::Text(row.name().to_string()),
        real(row.value()),
        Value::Text(canonical_tags(row.tags())),
        Value::Text(row.metric_type().as_str().to_string()),
        Value::Integer(row.timestamp_ms()),
        opt(service),
        opt(route_id),
        opt(client_id),
        opt(status),
        opt(row.tenant()),
        Value::Text(row.kind().as_str().to_string()),
        opt(row.source()),
        Value::Integer(row.window_ms()),
        Value::Integer(s.samples as i64),
        real(s.sum),
        real(s.min),
        real(s.max),
        real(s.last),
        Value::Integer(s.last_ts),
        s.sketch
            .as_ref()
            .map_or(Value::Null, |k| Value::Blob(k.to_bytes())),
    ]
}

impl Store {
    /// Writes one row; returns its id.
    pub async fn create(&self, row: &WindowRow) -> Result<i64, StoreError> {
        self.off_worker(async {
            let handle = self.writer().await?;
            let conn = &handle.writer;
            let mut params = metric_params(row);
            params.push(opt(self.instance().as_deref()));
            conn.execute(INSERT_METRIC, params)
                .await
                .map_err(StoreError::db("insert a metric row"))?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// Writes rows atomically: one transaction with one prepared
    /// statement on a local file, one round trip to a remote server. All or nothing: on error
    /// nothing is stored and the caller keeps the rows.
    pub async fn create_batch<'a, R, I>(&self, rows: I) -> Result<usize, StoreError>
    where
        R: RowData + Sync + 'a,
        I: IntoIterator<Item = &'a R>,
        I::IntoIter: Send,
    {
        self.write_metric_rows(None, rows).await.map(|w| match w {
            BatchWrite::Written(n) => n,
            BatchWrite::AlreadyWritten => 0,
        })
    }

    /// Like [`Store::create_batch`], at most once per `batch_id`: the id is stored in the same
    /// transaction as the rows, so when a write failed without saying whether it committed (a
    /// lost answer from a remote server, a timeout), retrying the same rows under the same id
    /// either writes them or finds them written, never both.
    pub async fn create_batch_once<'a, R, I>(
        &self,
        batch_id: &str,
        rows: I,
    ) -> Result<BatchWrite, StoreError>
    where
        R: RowData + Sync + 'a,
        I: IntoIterator<Item = &'a R>,
        I::IntoIter: Send,
    {
        self.write_metric_rows(Some(batch_id), rows).await
    }

    async fn write_metric_rows<'a, R, I>(
        &self,
        batch_id: Option<&str>,
        rows: I,
    ) -> Result<BatchWrite, StoreError>
    where
        R: RowData + Sync + 'a,
        I: IntoIterator<Item = &'a R>,
        I::IntoIter: Send,
    {
        self.off_worker(async {
            let instance = self.instance();
            let rows: Vec<Vec<Value>> = rows
                .into_iter()
                .map(|r| {
                    let mut p = metric_params(r);
                    p.push(opt(instance.as_deref()));
                    p
                })
                .collect();
            if rows.is_empty() {
                return Ok(BatchWrite::Written(0));
            }
            let n = rows.len();
            let mut inserts = vec![Insert {
                head: INSERT_HEAD,
                rows,
                upsert: "",
                context: "insert metric rows",
            }];
            if let Some(id) = batch_id {
                inserts.push(Insert {
                    head: "INSERT INTO write_batches (id)",
                    rows: vec![vec![Value::Text(id.to_string())]],
                    upsert: "",
                    context: "claim a write batch",
                });
            }
            let result = self.write_batch(inserts, "").await;
            match (result, batch_id) {
                (Ok(()), _) => Ok(BatchWrite::Written(n)),
                (Err(e), Some(id)) => {
                    // The claim fails when an earlier attempt committed: then the rows are in.
                    match self.batch_written(id).await {
                        Ok(true) => Ok(BatchWrite::AlreadyWritten),
                        _ => Err(e),
                    }
                }
                (Err(e), None) => Err(e),
            }
        })
        .await
    }

    /// Whether a batch with this id was committed.
    pub async fn batch_written(&self, batch_id: &str) -> Result<bool, StoreError> {
        self.off_worker(async {
            let conn = self.reader().await?;
            let n = crate::query::scalar_i64(
                &conn,
                "SELECT COUNT(*) FROM write_batches WHERE id = ?1",
                [batch_id],
            )
            .await?;
            Ok(n > 0)
        })
        .await
    }
}

/// What [`Store::create_batch_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWrite {
    /// The rows were written now (how many).
    Written(usize),
    /// An earlier attempt with the same id had committed them.
    AlreadyWritten,
}
