//! Traces and spans: one trace per pipeline execution with its time split, written in batches
//! (exactly once under retries), listed, read back and kept 7 days.

use crate::batch::Insert;
use crate::{Store, StoreError};
use libsql::Value;
use serde::{Deserialize, Serialize};

/// One pipeline execution , with the time split of docs/limits.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Unique id.
    pub id: String,
    /// Pipeline id.
    pub pipeline_id: String,
    /// Trigger event.
    pub trigger_event: String,
    /// Tenant.
    pub tenant: String,
    /// `ok`, `error` or `blocked`.
    pub status: String,
    /// `allow` or `block`.
    pub decision: String,
    /// Block or error reason.
    pub reason: Option<String>,
    /// Start, ms since the epoch.
    pub started_at_ms: i64,
    /// Total time.
    pub total_ms: f64,
    /// Pool checkout time.
    pub wait_ms: f64,
    /// Lua VM time.
    pub script_ms: f64,
    /// Time inside host helpers.
    pub helpers_ms: f64,
    /// Everything else the host did.
    pub overhead_ms: f64,
    /// Error text.
    pub error: Option<String>,
    /// Warnings (rejected metrics and the like).
    pub warnings: Vec<String>,
    /// One span per node.
    pub spans: Vec<SpanRecord>,
}

/// One node of a pipeline execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// Node id.
    pub node_id: String,
    /// Script id.
    pub script_id: String,
    /// `ok`, `error`, `blocked`, `timeout` or `skipped`.
    pub status: String,
    /// Start, ms since the epoch.
    pub started_at_ms: i64,
    /// Total time.
    pub total_ms: f64,
    /// Pool checkout time.
    pub wait_ms: f64,
    /// Lua VM time.
    pub script_ms: f64,
    /// Time inside host helpers.
    pub helpers_ms: f64,
    /// Everything else the host did.
    pub overhead_ms: f64,
    /// Error text.
    pub error: Option<String>,
}

impl Store {
    /// Writes traces and their spans atomically: one transaction on a local file, one round
    /// trip to a remote server.
    pub async fn insert_traces(&self, traces: &[TraceRecord]) -> Result<(), StoreError> {
        self.off_worker(async {
            if traces.is_empty() {
                return Ok(());
            }
            let text = |s: &str| Value::Text(s.to_string());
            let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
            let mut trace_rows = Vec::with_capacity(traces.len());
            for t in traces {
                trace_rows.push(vec![
                    text(&t.id),
                    text(&t.pipeline_id),
                    text(&t.trigger_event),
                    text(&t.tenant),
                    text(&t.status),
                    text(&t.decision),
                    opt(&t.reason),
                    Value::Integer(t.started_at_ms),
                    Value::Real(t.total_ms),
                    Value::Real(t.wait_ms),
                    Value::Real(t.script_ms),
                    Value::Real(t.helpers_ms),
                    Value::Real(t.overhead_ms),
                    opt(&t.error),
                    Value::Text(serde_json::to_string(&t.warnings).unwrap_or_else(|_| "[]".into())),
                    Value::Text(spans_text(t.started_at_ms, &t.spans)),
                ]);
            }
            let inserts = [Insert {
                head:
                    "INSERT INTO pipeline_traces (id, pipeline_id, trigger_event, tenant_id, status,
                    decision, reason, started_at, total_ms, wait_ms, script_ms, helpers_ms,
                    overhead_ms, error, warnings, spans)",
                rows: trace_rows,
                upsert: "",
                context: "insert traces",
            }];
            let result = self.write_batch(inserts.into(), "").await;
            if let Err(e) = result {
                // A retry of a batch that committed (its answer was lost) fails on the traces'
                // ids: the batch is in when every one of its ids is (it was one transaction).
                let conn = self.reader().await?;
                let mut sql = String::from("SELECT COUNT(*) FROM pipeline_traces WHERE id IN (");
                for (i, t) in traces.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    crate::batch::literal(&Value::Text(t.id.clone()), &mut sql);
                }
                sql.push(')');
                let found = crate::query::scalar_i64(&conn, &sql, ()).await.unwrap_or(0);
                if found as usize != traces.len() {
                    return Err(e);
                }
                return Ok(());
            }
            self.file_traces
                .fetch_add(traces.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    /// Stored traces by status (`ok`, `blocked`, `error`).
    pub async fn trace_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.gated_read(None, async {
            let conn = self.reader().await?;
            let mut rows = conn
                .query(
                    "SELECT status, COUNT(*) FROM pipeline_traces GROUP BY status",
                    (),
                )
                .await
                .map_err(StoreError::db("count traces"))?;
            let mut out = std::collections::BTreeMap::new();
            while let Some(r) = rows.next().await.map_err(StoreError::db("count traces"))? {
                let status: String = r.get(0).map_err(StoreError::db("count traces"))?;
                let n: i64 = r.get(1).map_err(StoreError::db("count traces"))?;
                out.insert(status, n as u64);
            }
            Ok(out)
        })
        .await
    }

    /// Spans of one trace, in node order.
    pub async fn trace_spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        self.gated_read(None, async {
            let conn = self.reader().await?;
            read_spans(&conn, trace_id).await
        })
        .await
    }

    /// The newest traces (without spans), optionally filtered by status and pipeline.
    pub async fn list_traces(
        &self,
        limit: u32,
        status: Option<&str>,
        pipeline_id: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<TraceRecord>, StoreError> {
        self.gated_read(tenant, async {
            let conn = self.reader().await?;
            let mut sql = String::from(
                "SELECT id, pipeline_id, trigger_event, tenant_id, status, decision, reason, started_at,
                        total_ms, wait_ms, script_ms, helpers_ms, overhead_ms, error, warnings
                   FROM pipeline_traces WHERE 1 = 1",
            );
            let mut params: Vec<Value> = Vec::new();
            if let Some(s) = status.filter(|s| !matches!(*s, "ok" | "blocked" | "error")) {
                // No trace has it: answered at once rather than by reading every trace.
                return Err(StoreError::InvalidQuery(format!(
                    "unknown trace status `{}`: expected ok, blocked or error",
                    s.chars().take(32).collect::<String>()
                )));
            }
            if let Some(s) = status {
                params.push(Value::Text(s.to_string()));
                sql.push_str(&format!(" AND status = ?{}", params.len()));
            }
            if let Some(p) = pipeline_id {
                params.push(Value::Text(p.to_string()));
                sql.push_str(&format!(" AND pipeline_id = ?{}", params.len()));
            }
            if let Some(t) = tenant {
                params.push(Value::Text(t.to_string()));
                sql.push_str(&format!(" AND tenant_id = ?{}", params.len()));
            }
            params.push(Value::Integer(i64::from(limit.clamp(1, 1_000))));
            sql.push_str(&format!(
                " ORDER BY started_at DESC, id DESC LIMIT ?{}",
                params.len()
            ));
            let mut rows = conn
                .query(&sql, params)
                .await
                .map_err(StoreError::db("list traces"))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().await.map_err(StoreError::db("list traces"))? {
                out.push(trace_from_row(&r)?);
            }
            Ok(out)
        })
        .await
    }

    /// One trace with its spans.
    pub async fn get_trace(&self, id: &str) -> Result<Option<TraceRecord>, StoreError> {
        self.trace_for(id, None).await
    }

    /// One trace with its spans, if it is `tenant`'s (any tenant's for `None`): a tenant's
    /// read takes one of the tenant's places among the reads, as its other reads do, and never
    /// loads another tenant's trace.
    pub async fn trace_for(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<TraceRecord>, StoreError> {
        self.gated_read(tenant, async {
            let conn = self.reader().await?;
            let mut rows = conn
                .query(
                    "SELECT id, pipeline_id, trigger_event, tenant_id, status, decision, reason, started_at,
                            total_ms, wait_ms, script_ms, helpers_ms, overhead_ms, error, warnings
                       FROM pipeline_traces WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)",
                    libsql::params![id, tenant],
                )
                .await
                .map_err(StoreError::db("read a trace"))?;
            let Some(r) = rows.next().await.map_err(StoreError::db("read a trace"))? else {
                return Ok(None);
            };
            let mut t = trace_from_row(&r)?;
            drop(rows);
            t.spans = read_spans(&conn, id).await?;
            Ok(Some(t))
        })
        .await
    }

    /// Per pipeline over a time range: executions and the summed time split, from traces.
    pub async fn trace_split_by_pipeline(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, u64, [f64; 4])>, StoreError> {
        self.gated_read(None, async {
            let conn = self.reader().await?;
            let mut rows = conn
                .query(
                    "SELECT pipeline_id, COUNT(*), SUM(wait_ms), SUM(script_ms), SUM(helpers_ms), SUM(overhead_ms)
                       FROM pipeline_traces WHERE started_at >= ?1 AND started_at < ?2
                      GROUP BY pipeline_id ORDER BY pipeline_id",
                    [from_ms, to_ms],
                )
                .await
                .map_err(StoreError::db("sum trace timings"))?;
            let mut out = Vec::new();
            while let Some(r) = rows
                .next()
                .await
                .map_err(StoreError::db("sum trace timings"))?
            {
                let e = || StoreError::db("sum trace timings");
                out.push((
                    r.get::<String>(0).map_err(e())?,
                    r.get::<i64>(1).map_err(e())? as u64,
                    [
                        r.get::<f64>(2).map_err(e())?,
                        r.get::<f64>(3).map_err(e())?,
                        r.get::<f64>(4).map_err(e())?,
                        r.get::<f64>(5).map_err(e())?,
                    ],
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Number of stored traces.
    pub async fn count_traces(&self) -> Result<u64, StoreError> {
        self.gated_read(None, async {
            let conn = self.reader().await?;
            crate::query::scalar_i64(&conn, "SELECT COUNT(*) FROM pipeline_traces", ())
                .await
                .map(|n| n as u64)
        })
        .await
    }
}

/// Spans of one trace, in node order, read on `conn` (inside the caller's gated read: a read
/// that waited for a second place while holding one could wait for good; adversary round 23).
async fn read_spans(
    conn: &crate::conn::Conn,
    trace_id: &str,
) -> Result<Vec<SpanRecord>, StoreError> {
    let mut rows = conn
        .query(
            "SELECT spans, started_at FROM pipeline_traces WHERE id = ?1",
            [trace_id],
        )
        .await
        .map_err(StoreError::db("read spans"))?;
    if let Some(r) = rows.next().await.map_err(StoreError::db("read spans"))? {
        if let Some(json) = r
            .get::<Option<String>>(0)
            .map_err(StoreError::db("read spans"))?
        {
            let started_at: i64 = r.get(1).map_err(StoreError::db("read spans"))?;
            return spans_from_text(&json, started_at).map_err(|e| StoreError::Corrupt {
                table: "pipeline_traces",
                id: 0,
                problem: format!("spans of trace {trace_id}: {e}"),
            });
        }
    }
    // A trace written before spans moved into its row (schema version 5).
    let mut rows = conn
        .query(
            "SELECT node_id, script_id, status, started_at, total_ms, wait_ms, script_ms,
                    helpers_ms, overhead_ms, error
               FROM pipeline_spans WHERE trace_id = ?1 ORDER BY id",
            [trace_id],
        )
        .await
        .map_err(StoreError::db("read spans"))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().await.map_err(StoreError::db("read spans"))? {
        let get_f = |i| r.get::<f64>(i);
        out.push(SpanRecord {
            node_id: r.get(0).map_err(StoreError::db("read spans"))?,
            script_id: r.get(1).map_err(StoreError::db("read spans"))?,
            status: r.get(2).map_err(StoreError::db("read spans"))?,
            started_at_ms: r.get(3).map_err(StoreError::db("read spans"))?,
            total_ms: get_f(4).map_err(StoreError::db("read spans"))?,
            wait_ms: get_f(5).map_err(StoreError::db("read spans"))?,
            script_ms: get_f(6).map_err(StoreError::db("read spans"))?,
            helpers_ms: get_f(7).map_err(StoreError::db("read spans"))?,
            overhead_ms: get_f(8).map_err(StoreError::db("read spans"))?,
            error: r
                .get::<Option<String>>(9)
                .map_err(StoreError::db("read spans"))?,
        });
    }
    Ok(out)
}

/// Nanoseconds of a time in milliseconds (what the clocks measure; finer is noise).
fn ns(ms: f64) -> i64 {
    // Saturating, and NaN as 0: a cast never fails.
    (ms * 1e6).round() as i64
}

/// A trace's spans as stored: one array per span, `[node_id, script_id, status, start (ms
/// after the trace's), total, wait, script, helpers, overhead (ns), error]`. A third of the
/// bytes of the spans as objects: a trace writer at an executor's full rate spent more than
/// half its time on them (their JSON, and the pages their bytes took in the log and the file).
fn spans_text(started_at_ms: i64, spans: &[SpanRecord]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(16 + spans.len() * 96);
    out.push('[');
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        for text in [&s.node_id, &s.script_id, &s.status] {
            json_string(text, &mut out);
            out.push(',');
        }
        let _ = write!(
            out,
            "{},{},{},{},{},{},",
            s.started_at_ms.saturating_sub(started_at_ms),
            ns(s.total_ms),
            ns(s.wait_ms),
            ns(s.script_ms),
            ns(s.helpers_ms),
            ns(s.overhead_ms)
        );
        match &s.error {
            Some(e) => json_string(e, &mut out),
            None => out.push_str("null"),
        }
        out.push(']');
    }
    out.push(']');
    out
}

/// Appends `s` as a JSON string.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        // Only ASCII bytes are escaped: every cut is on a character boundary.
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&s[plain..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "\\u{b:04x}");
                }
            }
            plain = i + 1;
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// A span as stored: an array (since the compact form) or an object (before it).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredSpan {
    Compact(
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<String>,
    ),
    Object(SpanRecord),
}

/// Reads spans stored by [`spans_text`] (or as objects, as older versions wrote them).
fn spans_from_text(json: &str, started_at_ms: i64) -> Result<Vec<SpanRecord>, serde_json::Error> {
    let ms = |ns: i64| ns as f64 / 1e6;
    let spans: Vec<StoredSpan> = serde_json::from_str(json)?;
    Ok(spans
        .into_iter()
        .map(|s| match s {
            StoredSpan::Object(s) => s,
            StoredSpan::Compact(
                node_id,
                script_id,
                status,
                start,
                total,
                wait,
                script,
                helpers,
                overhead,
                error,
            ) => SpanRecord {
                node_id,
                script_id,
                status,
                started_at_ms: started_at_ms.saturating_add(start),
                total_ms: ms(total),
                wait_ms: ms(wait),
                script_ms: ms(script),
                helpers_ms: ms(helpers),
                overhead_ms: ms(overhead),
                error,
            },
        })
        .collect())
}

fn trace_from_row(r: &libsql::Row) -> Result<TraceRecord, StoreError> {
    let e = || StoreError::db("decode a trace");
    let warnings: String = r.get(14).map_err(e())?;
    Ok(TraceRecord {
        id: r.get(0).map_err(e())?,
        pipeline_id: r.get(1).map_err(e())?,
        trigger_event: r.get(2).map_err(e())?,
        tenant: r.get(3).map_err(e())?,
        status: r.get(4).map_err(e())?,
        decision: r.get(5).map_err(e())?,
        reason: r.get(6).map_err(e())?,
        started_at_ms: r.get(7).map_err(e())?,
        total_ms: r.get(8).map_err(e())?,
        wait_ms: r.get(9).map_err(e())?,
        script_ms: r.get(10).map_err(e())?,
        helpers_ms: r.get(11).map_err(e())?,
        overhead_ms: r.get(12).map_err(e())?,
        error: r.get(13).map_err(e())?,
        warnings: serde_json::from_str(&warnings).unwrap_or_default(),
        spans: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(node: &str, error: Option<&str>) -> SpanRecord {
        SpanRecord {
            node_id: node.into(),
            script_id: format!("scripts/{node}.lua"),
            status: if error.is_some() { "error" } else { "ok" }.into(),
            started_at_ms: 1_700_000_000_123,
            total_ms: 0.012_345,
            wait_ms: 0.0,
            script_ms: 1_234.567_891,
            helpers_ms: 0.000_001,
            overhead_ms: 3.0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn spans_read_back_as_written_to_the_nanosecond() {
        let spans = vec![
            span("plain", None),
            span(
                "quote\"back\\slash\nnew\u{1}line €",
                Some("boom: \"x\"\t\u{7f}"),
            ),
        ];
        let text = spans_text(1_700_000_000_000, &spans);
        assert!(
            text.len() < serde_json::to_string(&spans).unwrap().len() / 2,
            "{text}"
        );
        assert_eq!(spans_from_text(&text, 1_700_000_000_000).unwrap(), spans);
        // Sub-nanosecond parts are not kept.
        let mut fine = span("fine", None);
        fine.total_ms = 0.000_000_4;
        let back = spans_from_text(&spans_text(0, &[fine]), 0).unwrap();
        assert_eq!(back[0].total_ms, 0.0);
    }

    #[test]
    fn spans_written_as_objects_still_read() {
        let spans = vec![span("old", Some("e"))];
        let objects = serde_json::to_string(&spans).unwrap();
        assert_eq!(spans_from_text(&objects, 0).unwrap(), spans);
        assert!(spans_from_text("[[\"a\"]]", 0).is_err());
        assert!(spans_from_text("{}", 0).is_err());
    }
}
