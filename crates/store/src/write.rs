use crate::{RowData, Store, StoreError, WindowRow};
use libsql::Value;
use luametrics_model::canonical_tags;

const INSERT_METRIC: &str = "INSERT INTO metrics (name, value, tags, metric_type, timestamp,
    service, route_id, client_id, status, tenant_id, kind, source, window_ms, samples, sum, min,
    max, last, last_ts, sketch)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";

fn opt(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

pub(crate) fn metric_params<R: RowData + ?Sized>(row: &R) -> Vec<Value> {
    let [service, route_id, client_id, status] = row.first_class();
    let s = row.summary();
    vec![
        Value::Text(row.name().to_string()),
        Value::Real(row.value()),
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
        Value::Real(s.sum),
        Value::Real(s.min),
        Value::Real(s.max),
        Value::Real(s.last),
        Value::Integer(s.last_ts),
        s.sketch
            .as_ref()
            .map_or(Value::Null, |k| Value::Blob(k.to_bytes())),
    ]
}

impl Store {
    /// Writes one row (seed §4.1 `create`); returns its id.
    pub async fn create(&self, row: &WindowRow) -> Result<i64, StoreError> {
        self.off_worker(async {
            let handle = self.writer().await?;
            let conn = &handle.writer;
            conn.execute(INSERT_METRIC, metric_params(row))
                .await
                .map_err(StoreError::db("insert a metric row"))?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// Writes rows in one transaction with one prepared statement (seed §4.1 `createBatch`).
    /// All or nothing: on error the transaction rolls back and the caller keeps the rows.
    pub async fn create_batch<'a, R, I>(&self, rows: I) -> Result<usize, StoreError>
    where
        R: RowData + Sync + 'a,
        I: IntoIterator<Item = &'a R>,
        I::IntoIter: Send,
    {
        self.off_worker(async {
            let mut rows = rows.into_iter().peekable();
            if rows.peek().is_none() {
                return Ok(0);
            }
            let handle = self.writer().await?;
            let conn = &handle.writer;
            let tx = conn
                .transaction()
                .await
                .map_err(StoreError::db("begin a flush transaction"))?;
            let result = async {
                let stmt = tx
                    .prepare(INSERT_METRIC)
                    .await
                    .map_err(StoreError::db("prepare the metric insert"))?;
                let mut n = 0;
                for row in rows {
                    n += 1;
                    stmt.execute(metric_params(row))
                        .await
                        .map_err(StoreError::db("insert a metric row"))?;
                    // libsql 0.10 does not reset a statement after execute: without this the next
                    // execute silently re-inserts the first row's values.
                    stmt.reset();
                }
                Ok::<_, StoreError>(n)
            }
            .await;
            match result {
                Ok(n) => {
                    tx.commit()
                        .await
                        .map_err(StoreError::db("commit a flush transaction"))?;
                    Ok(n)
                }
                Err(e) => {
                    // Rollback errors are secondary; the insert error is the one to report.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        })
        .await
    }
}
