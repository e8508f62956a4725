//! The versioned migrations, applied in order at start (one transactional batch per version
//! that claims it first, so instances starting together against one server all start).

use crate::conn::Conn;
use crate::StoreError;

/// Versioned migrations, applied in order, each in its own transaction. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "metrics, rollups, traces",
        r#"
CREATE TABLE metrics (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    value       REAL NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    metric_type TEXT NOT NULL DEFAULT 'system',
    timestamp   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL DEFAULT (cast(unixepoch('subsecond') * 1000 as integer)),
    service     TEXT,
    route_id    TEXT,
    client_id   TEXT,
    status      TEXT,
    tenant_id   TEXT,
    kind        TEXT NOT NULL,
    source      TEXT,
    window_ms   INTEGER NOT NULL,
    samples     INTEGER NOT NULL,
    sum         REAL NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    last        REAL NOT NULL,
    last_ts     INTEGER NOT NULL,
    sketch      BLOB
);
CREATE INDEX idx_metrics_name ON metrics(name, timestamp);
CREATE INDEX idx_metrics_timestamp ON metrics(timestamp);
CREATE INDEX idx_metrics_type ON metrics(metric_type);

CREATE TABLE metric_rollups (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    resolution   TEXT NOT NULL CHECK (resolution IN ('hour', 'day')),
    bucket_start INTEGER NOT NULL,
    series_key   TEXT NOT NULL,
    name         TEXT NOT NULL,
    tenant_id    TEXT,
    metric_type  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    tags         TEXT NOT NULL,
    source       TEXT,
    samples      INTEGER NOT NULL,
    sum          REAL NOT NULL,
    min          REAL NOT NULL,
    max          REAL NOT NULL,
    last         REAL NOT NULL,
    last_ts      INTEGER NOT NULL,
    sketch       BLOB
);
CREATE UNIQUE INDEX idx_rollups_series ON metric_rollups(resolution, series_key, bucket_start);
CREATE INDEX idx_rollups_name ON metric_rollups(name, resolution, bucket_start);

CREATE TABLE rollup_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

CREATE TABLE pipeline_traces (
    id            TEXT PRIMARY KEY,
    pipeline_id   TEXT NOT NULL,
    trigger_event TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    status        TEXT NOT NULL,
    decision      TEXT NOT NULL,
    reason        TEXT,
    started_at    INTEGER NOT NULL,
    total_ms      REAL NOT NULL,
    wait_ms       REAL NOT NULL,
    script_ms     REAL NOT NULL,
    helpers_ms    REAL NOT NULL,
    overhead_ms   REAL NOT NULL,
    error         TEXT,
    warnings      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX idx_traces_started ON pipeline_traces(started_at);
CREATE INDEX idx_traces_pipeline ON pipeline_traces(pipeline_id, started_at);

CREATE TABLE pipeline_spans (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id    TEXT NOT NULL REFERENCES pipeline_traces(id) ON DELETE CASCADE,
    node_id     TEXT NOT NULL,
    script_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    total_ms    REAL NOT NULL,
    wait_ms     REAL NOT NULL,
    script_ms   REAL NOT NULL,
    helpers_ms  REAL NOT NULL,
    overhead_ms REAL NOT NULL,
    error       TEXT
);
CREATE INDEX idx_spans_trace ON pipeline_spans(trace_id);
"#,
    ),
    (
        2,
        "rollups per tenant and per name",
        // Rollups gain a scope: one row per series (as before), per (name, tenant) and per name,
        // so wide queries read a few hundred rows instead of one per series. Existing rollups
        // are rebuilt from the raw rows still held (rolled up again from the start).
        r#"
ALTER TABLE metric_rollups ADD COLUMN scope TEXT NOT NULL DEFAULT 'series';
CREATE INDEX idx_rollups_scope ON metric_rollups(name, scope, resolution, bucket_start);
DELETE FROM metric_rollups;
DELETE FROM rollup_state WHERE key = 'rollup.raw_id';
"#,
    ),
    (
        3,
        "tenant read tokens",
        // Tokens the admin API minted for tenants, kept as SHA-256 digests: a copy of the
        // database does not hand out read access.
        r#"
CREATE TABLE tenant_tokens (
    digest     TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (cast(unixepoch('subsecond') * 1000 as integer))
);
CREATE INDEX idx_tenant_tokens_tenant ON tenant_tokens(tenant_id);
"#,
    ),
    (
        4,
        "fleet: row writers, the rollup guard, written batches",
        // Several instances write one database: each metric row names its writer. A rollup
        // reads, merges in Rust, then writes in one batch that first checks the watermark it
        // read is still current (a row in `rollup_guard` must satisfy the check), so two
        // instances rolling up at once never fold the same rows twice. A flush claims its
        // batch id in `write_batches` in the same transaction as its rows, so a batch retried
        // after an answer was lost (the server committed, the client never heard) is found
        // written instead of being written twice.
        r#"
ALTER TABLE metrics ADD COLUMN instance TEXT;
CREATE TABLE rollup_guard (
    ok INTEGER NOT NULL,
    CONSTRAINT rollup_watermark_moved CHECK (ok = 1)
);
CREATE TABLE write_batches (
    id         TEXT PRIMARY KEY,
    written_at INTEGER NOT NULL DEFAULT (cast(unixepoch('subsecond') * 1000 as integer))
);
"#,
    ),
    (
        5,
        "spans inside their trace",
        // A trace's spans are written as one JSON array in its row: one row per execution
        // instead of one plus one per node (with their index and sequence updates), which cut
        // the trace writer's cost per trace by more than half. Spans of traces written before
        // stay in `pipeline_spans` and are read from there.
        r#"
ALTER TABLE pipeline_traces ADD COLUMN spans TEXT;
"#,
    ),
    (
        6,
        "reads by tenant",
        // A tenant's reads (its names, its queries, its dashboard) scanned every tenant's rows:
        // with one large tenant, a small one's page took seconds. The index on the metric type
        // (two values, no read used it to narrow anything) gives way to one on the tenant, so
        // a flush maintains as many indexes as before.
        r#"
DROP INDEX IF EXISTS idx_metrics_type;
CREATE INDEX idx_metrics_tenant ON metrics(tenant_id, name, timestamp);
CREATE INDEX idx_rollups_tenant ON metric_rollups(tenant_id, name);
"#,
    ),
    (
        7,
        "traces by tenant",
        // A tenant's trace list walked every tenant's traces (adversary round 13: 3 million
        // traces of one tenant made every other tenant's list, and its usage page waiting for
        // a read place, take seconds, and the time told it how many traces the others had).
        // The index by pipeline gives way to one by tenant, so the trace writer maintains as
        // many indexes as before (a pipeline's list narrows by time instead).
        r#"
DROP INDEX IF EXISTS idx_traces_pipeline;
CREATE INDEX idx_traces_tenant ON pipeline_traces(tenant_id, started_at);
"#,
    ),
];

/// Highest schema version this build knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

pub(crate) async fn migrate(conn: &Conn) -> Result<(), StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL DEFAULT (cast(unixepoch('subsecond') * 1000 as integer)))",
        (),
    )
    .await
    .map_err(StoreError::db("create schema_migrations"))?;
    let current = crate::query::scalar_i64(
        conn,
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        (),
    )
    .await?;
    if current > latest_version() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest_version(),
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        // One transactional batch that first claims the version: when several instances start
        // at once, the claim of all but one fails on the primary key and rolls back their copy
        // of the migration, and they find it applied.
        let mut claim = String::from("INSERT INTO schema_migrations (version, name) VALUES (");
        crate::batch::literal(&libsql::Value::Integer(version), &mut claim);
        claim.push(',');
        crate::batch::literal(&libsql::Value::Text(name.to_string()), &mut claim);
        claim.push_str(");\n");
        claim.push_str(sql);
        if let Err(source) = conn.execute_transactional_batch(&claim).await {
            let now = crate::query::scalar_i64(
                conn,
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                (),
            )
            .await?;
            if now < version {
                return Err(StoreError::Migration {
                    version,
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}
