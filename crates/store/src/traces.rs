use crate::{Store, StoreError};
use libsql::Value;
use serde::{Deserialize, Serialize};

/// One pipeline execution (seed §1.1), with the time split of SPEC §6.5.
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
    /// Writes traces and their spans in one transaction.
    pub async fn insert_traces(&self, traces: &[TraceRecord]) -> Result<(), StoreError> {
        if traces.is_empty() {
            return Ok(());
        }
        let conn = self.writer.lock().await;
        let tx = conn
            .transaction()
            .await
            .map_err(StoreError::db("begin a trace transaction"))?;
        for t in traces {
            tx.execute(
                "INSERT INTO pipeline_traces (id, pipeline_id, trigger_event, tenant_id, status,
                    decision, reason, started_at, total_ms, wait_ms, script_ms, helpers_ms,
                    overhead_ms, error, warnings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                vec![
                    Value::Text(t.id.clone()),
                    Value::Text(t.pipeline_id.clone()),
                    Value::Text(t.trigger_event.clone()),
                    Value::Text(t.tenant.clone()),
                    Value::Text(t.status.clone()),
                    Value::Text(t.decision.clone()),
                    t.reason.clone().map_or(Value::Null, Value::Text),
                    Value::Integer(t.started_at_ms),
                    Value::Real(t.total_ms),
                    Value::Real(t.wait_ms),
                    Value::Real(t.script_ms),
                    Value::Real(t.helpers_ms),
                    Value::Real(t.overhead_ms),
                    t.error.clone().map_or(Value::Null, Value::Text),
                    Value::Text(serde_json::to_string(&t.warnings).unwrap_or_else(|_| "[]".into())),
                ],
            )
            .await
            .map_err(StoreError::db("insert a trace"))?;
            for s in &t.spans {
                tx.execute(
                    "INSERT INTO pipeline_spans (trace_id, node_id, script_id, status, started_at,
                        total_ms, wait_ms, script_ms, helpers_ms, overhead_ms, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    vec![
                        Value::Text(t.id.clone()),
                        Value::Text(s.node_id.clone()),
                        Value::Text(s.script_id.clone()),
                        Value::Text(s.status.clone()),
                        Value::Integer(s.started_at_ms),
                        Value::Real(s.total_ms),
                        Value::Real(s.wait_ms),
                        Value::Real(s.script_ms),
                        Value::Real(s.helpers_ms),
                        Value::Real(s.overhead_ms),
                        s.error.clone().map_or(Value::Null, Value::Text),
                    ],
                )
                .await
                .map_err(StoreError::db("insert a span"))?;
            }
        }
        tx.commit()
            .await
            .map_err(StoreError::db("commit a trace transaction"))?;
        Ok(())
    }

    /// Number of stored traces.
    pub async fn count_traces(&self) -> Result<u64, StoreError> {
        let conn = self.reader().await?;
        crate::query::scalar_i64(&conn, "SELECT COUNT(*) FROM pipeline_traces", ())
            .await
            .map(|n| n as u64)
    }
}
