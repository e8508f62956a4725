//! Atomic multi-row writes that cost one round trip on a remote server.
//!
//! libSQL's remote client sends every statement of an interactive transaction in its own HTTP
//! request, so a flush of 10,000 rows written statement by statement takes 10,000 round trips
//! while it holds the server's write lock. A transactional batch of SQL text goes in one request
//! and is applied all or nothing, so remote writes render their rows as multi-row `INSERT`s with
//! literal values ([`literal`]). Local files keep prepared statements in a transaction: there a
//! statement costs microseconds and binding beats rendering.

use crate::StoreError;
use libsql::{Connection, Value};
use std::fmt::Write as _;

/// Rows per rendered `INSERT ... VALUES` statement (bounds each statement's parse).
const ROWS_PER_STATEMENT: usize = 256;
/// Rows per prepared statement of a local write (each execution of a statement has a fixed
/// cost; past a few dozen rows it no longer shows).
const ROWS_PER_PREPARED: usize = 32;
/// Bound values per statement, under SQLite's limit (32,766 since 3.32).
const MAX_BOUND_VALUES: usize = 30_000;

/// Appends `head` (`INSERT INTO ...`) as `INSERT OR FAIL INTO ...`. A multi-row `INSERT`
/// that may abort makes SQLite copy every page it touches to a statement journal first, so
/// that it can undo the statement alone (a fifth of the cost of writing a batch of traces);
/// with `OR FAIL` a constraint error ends the statement where it stands, and the write is
/// undone whole anyway ([`write_atomically`]: one transaction, or one transactional batch).
fn push_head(head: &str, sql: &mut String) {
    match head.strip_prefix("INSERT INTO ") {
        Some(rest) => {
            sql.push_str("INSERT OR FAIL INTO ");
            sql.push_str(rest);
        }
        None => sql.push_str(head),
    }
}

/// `head VALUES (?1, ...), (...) upsert` for `rows` rows of `width` values.
fn placeholders(head: &str, width: usize, rows: usize, upsert: &str) -> String {
    let mut sql = String::with_capacity(head.len() + rows * width * 7 + upsert.len() + 24);
    push_head(head, &mut sql);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        sql.push_str(if r > 0 { ",(" } else { "(" });
        for c in 0..width {
            let _ = write!(
                sql,
                "{}?{}",
                if c > 0 { "," } else { "" },
                r * width + c + 1
            );
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(upsert);
    sql
}

/// Rows for one table, written by [`write_atomically`].
pub(crate) struct Insert<'a> {
    /// `INSERT INTO table (col, ...)`, without `VALUES`.
    pub head: &'a str,
    /// One vector of values per row, in the order of `head`'s columns.
    pub rows: Vec<Vec<Value>>,
    /// What follows the values (an `ON CONFLICT` clause), or empty.
    pub upsert: &'a str,
    /// What a failure was doing, for the error.
    pub context: &'static str,
}

/// Appends `v` as an SQL literal that reads back as the same value.
pub(crate) fn literal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Real(r) if r.is_nan() => out.push_str("NULL"),
        // SQLite reads an out-of-range literal as an infinity.
        Value::Real(r) if r.is_infinite() => {
            out.push_str(if *r > 0.0 { "9e999" } else { "-9e999" })
        }
        // Debug prints the shortest text that reads back as the same f64, always with a `.` or
        // an exponent, so SQLite types it REAL. (SQLite's own text-to-real conversion can be
        // one unit in the last place off near the ends of the range, e.g. 1e-300; counts,
        // sums of counts and sketches, which are blobs, are exact.)
        Value::Real(r) => {
            let _ = write!(out, "{r:?}");
        }
        Value::Text(s) if s.contains('\0') => {
            // A literal cannot hold NUL; a cast blob keeps every byte.
            out.push_str("CAST(");
            hex(s.as_bytes(), out);
            out.push_str(" AS TEXT)");
        }
        Value::Text(s) => {
            out.push('\'');
            for c in s.chars() {
                if c == '\'' {
                    out.push('\'');
                }
                out.push(c);
            }
            out.push('\'');
        }
        Value::Blob(b) => hex(b, out),
    }
}

fn hex(bytes: &[u8], out: &mut String) {
    out.push_str("X'");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
}

/// Renders `insert`'s rows as `INSERT ... VALUES (...), (...);` statements.
pub(crate) fn render(insert: &Insert<'_>, out: &mut String) {
    for chunk in insert.rows.chunks(ROWS_PER_STATEMENT) {
        push_head(insert.head, out);
        out.push_str(" VALUES ");
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('(');
            for (j, v) in row.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                literal(v, out);
            }
            out.push(')');
        }
        out.push(' ');
        out.push_str(insert.upsert);
        out.push_str(";\n");
    }
}

/// Writes every insert, then `tail` (SQL text, may be empty), all or nothing: on error nothing
/// of it is stored and the caller keeps its rows. `remote: Some(bound)` sends one round trip
/// (rendered text) that fails with `TimedOut` past `bound` (whether the server applied it is
/// then unknown: callers retry in a way that cannot apply it twice); `None` uses prepared
/// statements in a local transaction.
pub(crate) async fn write_atomically(
    conn: &Connection,
    remote: Option<std::time::Duration>,
    inserts: Vec<Insert<'_>>,
    tail: &str,
) -> Result<(), StoreError> {
    if let Some(bound) = remote {
        let mut sql = String::new();
        for insert in &inserts {
            render(insert, &mut sql);
        }
        sql.push_str(tail);
        if sql.is_empty() {
            return Ok(());
        }
        let context = inserts.first().map_or("write a batch", |i| i.context);
        return match tokio::time::timeout(bound, conn.execute_transactional_batch(&sql)).await {
            Ok(done) => done.map(|_| ()).map_err(StoreError::db(context)),
            Err(_) => Err(StoreError::TimedOut {
                what: context,
                after_ms: bound.as_millis() as u64,
            }),
        };
    }
    let tx = conn
        .transaction()
        .await
        .map_err(StoreError::db("begin a write transaction"))?;
    let result = async {
        // The rows are moved into the statements: a flush's values are not copied again.
        // Several rows per statement: each execution of a statement costs libSQL's wrapper
        // and SQLite's VM set-up a few microseconds whatever it inserts.
        for insert in inserts.into_iter().filter(|i| !i.rows.is_empty()) {
            let width = insert.rows[0].len().max(1);
            let per = (MAX_BOUND_VALUES / width).clamp(1, ROWS_PER_PREPARED);
            let mut prepared: Option<(usize, libsql::Statement)> = None;
            let mut rows = insert.rows.into_iter().peekable();
            while rows.peek().is_some() {
                let chunk: Vec<Vec<Value>> = rows.by_ref().take(per).collect();
                let n = chunk.len();
                if prepared.as_ref().is_none_or(|(m, _)| *m != n) {
                    let sql = placeholders(insert.head, width, n, insert.upsert);
                    let stmt = tx
                        .prepare(&sql)
                        .await
                        .map_err(StoreError::db(insert.context))?;
                    prepared = Some((n, stmt));
                }
                let Some((_, stmt)) = prepared.as_ref() else {
                    continue;
                };
                let values: Vec<Value> = chunk.into_iter().flatten().collect();
                stmt.execute(values)
                    .await
                    .map_err(StoreError::db(insert.context))?;
                // libsql 0.10 does not reset a statement after execute: without this the next
                // execute silently re-inserts the first row's values.
                stmt.reset();
            }
        }
        if !tail.is_empty() {
            tx.execute_batch(tail)
                .await
                .map_err(StoreError::db("finish a write batch"))?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    match result {
        Ok(()) => tx
            .commit()
            .await
            .map_err(StoreError::db("commit a write transaction")),
        Err(e) => {
            // Rollback errors are secondary; the insert error is the one to report.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> String {
        let mut s = String::new();
        literal(&v, &mut s);
        s
    }

    #[test]
    fn literals_escape_and_keep_types() {
        assert_eq!(lit(Value::Text("it's".into())), "'it''s'");
        assert_eq!(lit(Value::Text("a\0b".into())), "CAST(X'610062' AS TEXT)");
        assert_eq!(lit(Value::Real(1.0)), "1.0");
        assert_eq!(lit(Value::Real(f64::INFINITY)), "9e999");
        assert_eq!(lit(Value::Real(f64::NAN)), "NULL");
        assert_eq!(lit(Value::Integer(i64::MIN)), "-9223372036854775808");
        assert_eq!(lit(Value::Blob(vec![0, 255])), "X'00ff'");
    }

    /// An in-memory database with a table `t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`.
    async fn table_t() -> (libsql::Database, libsql::Connection) {
        let db = libsql::Builder::new_local(":memory:")
            .build()
            .await
            .unwrap();
        let conn = db.connect().unwrap();
        conn.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            (),
        )
        .await
        .unwrap();
        (db, conn)
    }

    /// Rows `(i, "v{i}")` of `t`.
    fn rows(ids: std::ops::Range<i64>) -> Vec<Vec<Value>> {
        ids.map(|i| vec![Value::Integer(i), Value::Text(format!("v{i}"))])
            .collect()
    }

    /// A constraint error anywhere in a local write (`OR FAIL` statements stop where they
    /// fail) leaves nothing of the write: not the statements before it, not the rows before it
    /// in its own statement.
    #[tokio::test]
    async fn a_failing_local_write_leaves_nothing() {
        let (_db, conn) = table_t().await;
        let insert = |rows| Insert {
            head: "INSERT INTO t (id, v)",
            rows,
            upsert: "",
            context: "insert",
        };
        // 100 rows, then a second insert whose 40th row repeats an id (mid-statement), and
        // a NOT NULL violation in a third.
        let mut dup = rows(100..140);
        dup[39][0] = Value::Integer(7);
        let mut null = rows(200..202);
        null[1][1] = Value::Null;
        for inserts in [
            vec![insert(rows(0..100)), insert(dup)],
            vec![insert(rows(0..100)), insert(null)],
        ] {
            let e = write_atomically(&conn, None, inserts, "").await;
            assert!(e.is_err(), "{e:?}");
            let mut n = conn.query("SELECT COUNT(*) FROM t", ()).await.unwrap();
            let n: i64 = n.next().await.unwrap().unwrap().get(0).unwrap();
            assert_eq!(n, 0);
        }
        write_atomically(&conn, None, vec![insert(rows(0..100))], "")
            .await
            .unwrap();
    }

    /// Rendered literals store exactly what bound parameters store.
    #[tokio::test]
    async fn rendered_rows_read_back_as_bound_rows() {
        let db = libsql::Builder::new_local(":memory:")
            .build()
            .await
            .unwrap();
        let conn = db.connect().unwrap();
        let rows = vec![
            vec![
                Value::Text("x'; DROP TABLE t; --\u{20ac}\0tail".into()),
                Value::Real(0.1 + 0.2),
                Value::Integer(i64::MIN),
                Value::Blob(vec![1, 2, 3]),
            ],
            vec![
                Value::Null,
                Value::Real(-123.456e-7),
                Value::Integer(i64::MAX),
                Value::Real(f64::NEG_INFINITY),
            ],
        ];
        let mut read = Vec::new();
        let rendered = Some(std::time::Duration::from_secs(60));
        for (table, remote) in [("rendered", rendered), ("bound", None)] {
            conn.execute(&format!("CREATE TABLE {table} (a, b, c, d)"), ())
                .await
                .unwrap();
            let head = format!("INSERT INTO {table} (a, b, c, d)");
            let insert = Insert {
                head: &head,
                rows: rows.clone(),
                upsert: "",
                context: "insert",
            };
            write_atomically(&conn, remote, vec![insert], "")
                .await
                .unwrap();
            let mut got = conn
                .query(
                    &format!(
                        "SELECT a, b, c, d, length(CAST(a AS BLOB)) FROM {table} ORDER BY rowid"
                    ),
                    (),
                )
                .await
                .unwrap();
            let mut values = Vec::new();
            while let Some(row) = got.next().await.unwrap() {
                values.push(
                    (0..5)
                        .map(|i| row.get_value(i).unwrap())
                        .collect::<Vec<_>>(),
                );
            }
            read.push(values);
        }
        assert_eq!(read[0], read[1]);
        // Every byte of the text is stored (the NUL included), and the numbers are exact.
        assert_eq!(read[0][0][4], Value::Integer(28));
        for (got, want) in read[0].iter().zip(&rows) {
            assert_eq!(&got[1..4], &want[1..4]);
        }
    }
}
