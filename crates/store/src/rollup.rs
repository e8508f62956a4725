//! Rollups (hour and day tiers built from window rows, guarded by a watermark so any number of
//! instances may run them at once) and retention in bounded batches (docs/data-model.md).

use crate::batch::{literal, Insert};
use crate::conn::Conn;
use crate::query::{decode_row, scalar_i64, DAY_MS, HOUR_MS, ROW_COLUMNS};
use crate::{Store, StoreError, StoredRow};
use libsql::Value;
use luametrics_model::canonical_tags;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const WATERMARK_KEY: &str = "rollup.raw_id";
/// Raw rows folded per rollup transaction; bounds memory and lock time.
const ROLLUP_BATCH: i64 = 20_000;
/// Batches thrown away because another instance moved the watermark, before giving up.
const MAX_RACES: u64 = 100;
/// How long the ids of written flush batches are kept (see `Store::create_batch_once`).
const WRITE_BATCH_DAYS: i64 = 7;
/// Existing rollup rows read per query when merging.
const MERGE_KEYS_PER_QUERY: usize = 200;

/// How long each tier is kept (docs/data-model.md). Days, since that is how operators think about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Raw flush-window rows, 7 to 30 days.
    pub raw_days: u32,
    /// Hourly rollups.
    pub hourly_days: u32,
    /// Daily rollups.
    pub daily_days: u32,
    /// Pipeline traces and spans.
    pub trace_days: u32,
    /// Rows deleted per statement, so a delete never holds the write lock for long.
    pub batch: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw_days: 14,
            hourly_days: 90,
            daily_days: 400,
            trace_days: 7,
            batch: 5_000,
        }
    }
}

impl Retention {
    /// Checks the ranges docs/data-model.md allows.
    pub fn validate(&self) -> Result<(), StoreError> {
        if !(7..=30).contains(&self.raw_days) {
            return Err(StoreError::InvalidRetention(format!(
                "retention.raw_days = {} (allowed: 7 to 30)",
                self.raw_days
            )));
        }
        if self.hourly_days < self.raw_days || self.daily_days < self.hourly_days {
            return Err(StoreError::InvalidRetention(
                "retention must not shrink from raw to hourly to daily".into(),
            ));
        }
        if self.trace_days == 0 || self.batch == 0 {
            return Err(StoreError::InvalidRetention(
                "retention.trace_days and retention.batch must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What one rollup run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollupReport {
    /// Raw rows folded in.
    pub raw_rows: u64,
    /// Rollup rows written (inserted or updated).
    pub rollup_rows: u64,
    /// The new watermark (highest raw id folded in).
    pub watermark: i64,
}

/// What one retention run deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetentionReport {
    /// The rollup that ran first.
    pub rollup: RollupReport,
    /// Raw rows deleted.
    pub raw_deleted: u64,
    /// Hourly rollups deleted.
    pub hourly_deleted: u64,
    /// Daily rollups deleted.
    pub daily_deleted: u64,
    /// Traces deleted (their spans go with them).
    pub traces_deleted: u64,
    /// Why the rollup failed, when it did: retention went on without it (raw rows only up to
    /// the watermark it left), so one bad row cannot stop every deletion for good.
    pub rollup_error: Option<String>,
}

pub(crate) async fn watermark(conn: &Conn) -> Result<i64, StoreError> {
    scalar_i64(
        conn,
        "SELECT COALESCE((SELECT value FROM rollup_state WHERE key = ?1), 0)",
        [WATERMARK_KEY],
    )
    .await
}

/// Rollup buckets by (resolution, series key, bucket start).
type Buckets = HashMap<(&'static str, String, i64), Bucket>;

struct Bucket {
    row: StoredRow,
    scope: &'static str,
}

/// The rollup scopes a raw row feeds: its own series, its (name, tenant) and its name.
fn scopes(r: &StoredRow) -> [(&'static str, String, Option<String>, bool); 3] {
    use crate::row::series_key;
    [
        ("series", r.series_key(), r.tenant.clone(), true),
        (
            "tenant",
            format!(
                "tenant\u{1e}{}",
                series_key(r.metric_type, r.tenant.as_deref(), &r.name, r.kind, "{}")
            ),
            r.tenant.clone(),
            false,
        ),
        (
            "name",
            format!(
                "name\u{1e}{}",
                series_key(r.metric_type, None, &r.name, r.kind, "{}")
            ),
            None,
            false,
        ),
    ]
}

impl Store {
    /// Folds raw rows above the watermark into hourly and daily rollups. Idempotent and safe to
    /// run at any time, from any number of instances at once: late rows (a flush retried after
    /// an outage) are folded in when they land, and a batch whose watermark another instance
    /// moved meanwhile is thrown away whole and read again, so no row is folded twice.
    pub async fn rollup(&self) -> Result<RollupReport, StoreError> {
        self.off_worker_steps(async {
            let mut report = RollupReport::default();
            let mut raced = 0;
            loop {
                match self.rollup_batch(&mut report).await? {
                    Some(n) if n < ROLLUP_BATCH as u64 => return Ok(report),
                    Some(_) => {}
                    None => {
                        raced += 1;
                        if raced > MAX_RACES {
                            return Err(StoreError::Contended {
                                what: "the rollup",
                                attempts: raced,
                            });
                        }
                        // Let the instance that won finish its next batch first.
                        tokio::time::sleep(std::time::Duration::from_millis(5 * raced)).await;
                    }
                }
            }
        })
        .await
    }

    /// Folds one batch of raw rows. `None`: another instance moved the watermark between this
    /// batch's reads and its write, which was then rolled back.
    async fn rollup_batch(&self, report: &mut RollupReport) -> Result<Option<u64>, StoreError> {
        let (mark, read) = self
            .bounded("reading rows to roll up", self.rollup_read())
            .await?;
        let Some((max_id, n, buckets)) = read else {
            report.watermark = mark;
            return Ok(Some(0));
        };
        self.rollup_write(report, mark, max_id, n, buckets).await
    }

    /// A rollup batch's reads: the watermark, and the raw rows above it folded into buckets
    /// with what earlier runs stored for those buckets (`None`: nothing to fold).
    #[allow(clippy::type_complexity)]
    async fn rollup_read(&self) -> Result<(i64, Option<(i64, u64, Buckets)>), StoreError> {
        let conn = self.reader().await?;
        let mark = watermark(&conn).await?;
        let mut rows = conn
            .query(
                &format!("SELECT {ROW_COLUMNS} FROM metrics WHERE id > ?1 ORDER BY id LIMIT ?2"),
                [mark, ROLLUP_BATCH],
            )
            .await
            .map_err(StoreError::db("read rows to roll up"))?;
        let mut buckets: Buckets = HashMap::new();
        let mut max_id = mark;
        let mut n = 0u64;
        while let Some(row) = rows
            .next()
            .await
            .map_err(StoreError::db("read rows to roll up"))?
        {
            let r = decode_row(&row, "metrics", None)?;
            max_id = max_id.max(r.id);
            n += 1;
            for (scope, key, tenant, keep_tags) in scopes(&r) {
                for (res, size) in [("hour", HOUR_MS), ("day", DAY_MS)] {
                    let start = r.timestamp_ms.div_euclid(size) * size;
                    match buckets.entry((res, key.clone(), start)) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            e.get_mut()
                                .row
                                .summary
                                .merge(&r.summary)
                                .map_err(|e| corrupt(r.id, e))?;
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let mut row = r.clone();
                            row.timestamp_ms = start;
                            row.window_ms = size;
                            row.tenant = tenant.clone();
                            if !keep_tags {
                                row.tags.clear();
                                row.source = None;
                            }
                            e.insert(Bucket { row, scope });
                        }
                    }
                }
            }
        }
        drop(rows);
        if n == 0 {
            return Ok((mark, None));
        }
        merge_existing(&conn, &mut buckets).await?;
        Ok((mark, Some((max_id, n, buckets))))
    }

    /// A rollup batch's write: upserts, the guard and the new watermark in one batch.
    async fn rollup_write(
        &self,
        report: &mut RollupReport,
        mark: i64,
        max_id: i64,
        n: u64,
        buckets: Buckets,
    ) -> Result<Option<u64>, StoreError> {
        let mut upserts = Vec::with_capacity(buckets.len());
        for ((res, key, start), b) in buckets {
            let s = &b.row.summary;
            upserts.push(vec![
                Value::Text(res.to_string()),
                Value::Integer(start),
                Value::Text(key),
                Value::Text(b.row.name.clone()),
                b.row.tenant.clone().map_or(Value::Null, Value::Text),
                Value::Text(b.row.metric_type.as_str().into()),
                Value::Text(b.row.kind.as_str().into()),
                Value::Text(canonical_tags(&b.row.tags)),
                b.row.source.clone().map_or(Value::Null, Value::Text),
                Value::Integer(s.samples as i64),
                crate::write::real(s.sum),
                crate::write::real(s.min),
                crate::write::real(s.max),
                crate::write::real(s.last),
                Value::Integer(s.last_ts),
                s.sketch
                    .as_ref()
                    .map_or(Value::Null, |k| Value::Blob(k.to_bytes())),
                Value::Text(b.scope.to_string()),
            ]);
        }
        let written = upserts.len() as u64;
        // The guard row satisfies its check only while the watermark is still the one read
        // above; otherwise the whole batch, upserts included, rolls back.
        let tail = format!(
            "INSERT INTO rollup_guard (ok) SELECT COALESCE((SELECT value FROM rollup_state WHERE key = '{WATERMARK_KEY}'), 0) = {mark};
             DELETE FROM rollup_guard;
             INSERT INTO rollup_state (key, value) VALUES ('{WATERMARK_KEY}', {max_id})
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
        );
        let insert = Insert {
            head: "INSERT INTO metric_rollups (resolution, bucket_start, series_key, name, tenant_id,
                metric_type, kind, tags, source, samples, sum, min, max, last, last_ts, sketch, scope)",
            rows: upserts,
            upsert: "ON CONFLICT (resolution, series_key, bucket_start) DO UPDATE SET
                samples = excluded.samples, sum = excluded.sum, min = excluded.min,
                max = excluded.max, last = excluded.last, last_ts = excluded.last_ts,
                sketch = excluded.sketch",
            context: "write rollup rows",
        };
        let result = self.write_batch(vec![insert], &tail).await;
        if let Err(e) = result {
            // Moved by another instance: nothing of this batch was kept; read again.
            let now = self
                .bounded("re-reading the rollup watermark", async {
                    watermark(&self.reader().await?).await
                })
                .await?;
            if now != mark {
                return Ok(None);
            }
            return Err(e);
        }
        report.rollup_rows += written;
        report.raw_rows += n;
        report.watermark = max_id;
        Ok(Some(n))
    }

    /// Rolls up, then deletes what is past each tier's horizon, in bounded batches. A raw row
    /// is deleted only once it is folded into the rollups.
    pub async fn retention(
        &self,
        policy: &Retention,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        self.off_worker_steps(async {
            policy.validate()?;
            let (rollup, rollup_error) = match self.rollup().await {
                Ok(r) => (r, None),
                Err(e) => {
                    // Deleting raw rows up to the watermark a failed rollup left deletes only
                    // rows folded in already.
                    let watermark = self
                        .bounded("reading the rollup watermark", async {
                            watermark(&self.reader().await?).await
                        })
                        .await?;
                    let report = RollupReport {
                        watermark,
                        ..RollupReport::default()
                    };
                    (report, Some(e.to_string()))
                }
            };
            let horizon = |days: u32| now_ms - i64::from(days) * DAY_MS;
            let batch = i64::from(policy.batch);
            let raw_deleted = self
                .delete_batched(
                    "DELETE FROM metrics WHERE id IN (SELECT id FROM metrics WHERE timestamp < ?1 AND id <= ?2 LIMIT ?3)",
                    horizon(policy.raw_days),
                    rollup.watermark,
                    batch,
                )
                .await?;
            let hourly_deleted = self
                .delete_batched(
                    "DELETE FROM metric_rollups WHERE id IN (SELECT id FROM metric_rollups WHERE resolution = 'hour' AND bucket_start < ?1 AND ?2 = ?2 LIMIT ?3)",
                    horizon(policy.hourly_days),
                    0,
                    batch,
                )
                .await?;
            let daily_deleted = self
                .delete_batched(
                    "DELETE FROM metric_rollups WHERE id IN (SELECT id FROM metric_rollups WHERE resolution = 'day' AND bucket_start < ?1 AND ?2 = ?2 LIMIT ?3)",
                    horizon(policy.daily_days),
                    0,
                    batch,
                )
                .await?;
            let trace_horizon = horizon(policy.trace_days);
            self.delete_batched(
                "DELETE FROM pipeline_spans WHERE id IN (SELECT s.id FROM pipeline_spans s JOIN pipeline_traces t ON t.id = s.trace_id WHERE t.started_at < ?1 AND ?2 = ?2 LIMIT ?3)",
                trace_horizon,
                0,
                batch,
            )
            .await?;
            let traces_deleted = self
                .delete_batched(
                    "DELETE FROM pipeline_traces WHERE id IN (SELECT id FROM pipeline_traces WHERE started_at < ?1 AND ?2 = ?2 LIMIT ?3)",
                    trace_horizon,
                    0,
                    batch,
                )
                .await?;
            // Batch ids only matter while a write may be retried (seconds to hours); their age
            // is taken on the server's clock, which stamped them, not on this instance's.
            self.delete_batched(
                "DELETE FROM write_batches WHERE id IN (SELECT id FROM write_batches WHERE written_at < cast(unixepoch('subsecond') * 1000 as integer) - ?1 AND ?2 = ?2 LIMIT ?3)",
                WRITE_BATCH_DAYS * DAY_MS,
                0,
                batch,
            )
            .await?;
            Ok(RetentionReport {
                rollup,
                raw_deleted,
                hourly_deleted,
                daily_deleted,
                traces_deleted,
                rollup_error,
            })
        })
        .await
    }

    async fn delete_batched(
        &self,
        sql: &str,
        horizon: i64,
        extra: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .bounded("deleting expired rows", async {
                    let handle = self.writer().await?;
                    handle
                        .writer
                        .execute(sql, [horizon, extra, batch])
                        .await
                        .map_err(StoreError::db("delete expired rows"))
                })
                .await?;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
            // Let flushes in between batches.
            tokio::task::yield_now().await;
        }
    }
}

/// Merges into each bucket what earlier runs stored for it, reading the existing rollup rows a
/// few hundred keys per query (one round trip each on a remote server, not one per bucket).
async fn merge_existing(conn: &Conn, buckets: &mut Buckets) -> Result<(), StoreError> {
    let keys: Vec<(&'static str, String, i64)> = buckets.keys().cloned().collect();
    let columns = ROW_COLUMNS.replace("timestamp, window_ms", "bucket_start, 0");
    for chunk in keys.chunks(MERGE_KEYS_PER_QUERY) {
        let mut sql = format!(
            "SELECT {columns}, resolution, series_key FROM metric_rollups
             WHERE (resolution, series_key, bucket_start) IN (VALUES "
        );
        for (i, (res, key, start)) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            literal(&Value::Text(res.to_string()), &mut sql);
            sql.push(',');
            literal(&Value::Text(key.clone()), &mut sql);
            sql.push(',');
            literal(&Value::Integer(*start), &mut sql);
            sql.push(')');
        }
        sql.push(')');
        let mut existing = conn
            .query(&sql, ())
            .await
            .map_err(StoreError::db("read existing rollups"))?;
        while let Some(row) = existing
            .next()
            .await
            .map_err(StoreError::db("read existing rollups"))?
        {
            let res: String = row
                .get(16)
                .map_err(StoreError::db("read existing rollups"))?;
            let key: String = row
                .get(17)
                .map_err(StoreError::db("read existing rollups"))?;
            let start: i64 = row
                .get(7)
                .map_err(StoreError::db("read existing rollups"))?;
            let res = if res == "hour" { "hour" } else { "day" };
            if let Some(b) = buckets.get_mut(&(res, key, start)) {
                let old = decode_row(&row, "metric_rollups", Some(b.row.window_ms))?;
                b.row
                    .summary
                    .merge(&old.summary)
                    .map_err(|e| corrupt(old.id, e))?;
            }
        }
    }
    Ok(())
}

fn corrupt(id: i64, e: luametrics_sketch::SketchError) -> StoreError {
    StoreError::Corrupt {
        table: "metrics",
        id,
        problem: e.to_string(),
    }
}
