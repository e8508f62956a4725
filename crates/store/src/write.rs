use crate::batch::{write_atomically, Insert};
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
            let mut params = metric_params(row);
            params.push(opt(self.instance().as_deref()));
            conn.execute(INSERT_METRIC, params)
                .await
                .map_err(StoreError::db("insert a metric row"))?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// Writes rows atomically (seed §4.1 `createBatch`): one transaction with one prepared
    /// statement on a local file, one round trip to a remote server. All or nothing: on error
    /// nothing is stored and the caller keeps the rows.
    pub async fn create_batch<'a, R, I>(&self, rows: I) -> Result<usize, StoreError>
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
                return Ok(0);
            }
            let n = rows.len();
            let handle = self.writer().await?;
            let insert = Insert {
                head: INSERT_HEAD,
                rows,
                upsert: "",
                context: "insert metric rows",
            };
            write_atomically(&handle.writer, !self.location.is_local(), &[insert], "").await?;
            Ok(n)
        })
        .await
    }
}
