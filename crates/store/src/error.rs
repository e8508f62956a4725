//! The store's typed errors, each naming what it was doing and, for the database's own errors,
//! whether retrying may help (`is_transient`), which the recorder's retries and `/readyz` use.

/// Why a store operation failed; every variant says what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database setting is neither a path nor a supported URL.
    #[error("unsupported database location `{0}`: use a file path, or a libsql://, http:// or https:// URL")]
    UnknownScheme(String),
    /// The database file cannot be created or written.
    #[error("database path `{path}` is not writable: {reason}")]
    Unwritable {
        /// The configured path.
        path: String,
        /// What the filesystem said.
        reason: String,
    },
    /// The database file was deleted or replaced under the open store: writes would land in a
    /// file nobody can read again.
    #[error(
        "database file `{path}` was {fault} while open: writes are refused until it is recreated"
    )]
    Gone {
        /// The configured path.
        path: String,
        /// What happened to it.
        fault: crate::FileFault,
    },
    /// The database could not be opened or migrated at start.
    #[error("cannot open database `{path}`: {source}{hint}")]
    Open {
        /// The configured path or URL.
        path: String,
        /// The likely cause, when the error suggests one (starts with a separator).
        hint: &'static str,
        /// What failed.
        #[source]
        source: Box<StoreError>,
    },
    /// libSQL reported an error.
    #[error("database error while trying to {context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// libSQL's error.
        #[source]
        source: libsql::Error,
    },
    /// A migration could not be applied.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// Migration number.
        version: i64,
        /// Migration name.
        name: &'static str,
        /// libSQL's error.
        #[source]
        source: libsql::Error,
    },
    /// The database was migrated by a newer luametrics.
    #[error(
        "database schema version {found} is newer than this luametrics supports ({supported})"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A stored row could not be decoded.
    #[error("stored row {id} in {table} is corrupt: {problem}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Row id.
        id: i64,
        /// What is wrong.
        problem: String,
    },
    /// A query's parameters are invalid.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A remote call did not answer in time; whether it took effect is unknown.
    #[error("{what} got no answer within {after_ms} ms")]
    TimedOut {
        /// What was being done.
        what: &'static str,
        /// How long it waited.
        after_ms: u64,
    },
    /// Other instances kept winning a race this one retries (a fleet on one database).
    #[error(
        "{what} lost {attempts} races with other instances sharing the database; try again later"
    )]
    Contended {
        /// What kept losing.
        what: &'static str,
        /// How many times it tried.
        attempts: u64,
    },
    /// A read ran past the read timeout and was interrupted (`Store::set_read_limits`).
    #[error(
        "the read ran past {after_ms} ms and was stopped; ask for less (a shorter range, a \
         larger step, fewer names)"
    )]
    ReadTimeout {
        /// The read timeout.
        after_ms: u64,
    },
    /// A tenant already has as many reads in flight or waiting as it may
    /// ([`crate::MAX_TENANT_READS_WAITING`] beyond its places).
    #[error(
        "this tenant already has {in_line} reads running or waiting; retry once some are answered"
    )]
    ReadBusy {
        /// Reads of the tenant running or waiting.
        in_line: usize,
    },
    /// A retention setting is out of range.
    #[error("invalid retention setting: {0}")]
    InvalidRetention(String),
}

impl StoreError {
    /// Wraps a libSQL error with what was being done (for `map_err`).
    pub fn db(context: &'static str) -> impl FnOnce(libsql::Error) -> StoreError {
        move |source| StoreError::Db { context, source }
    }

    /// Names the database and the likely cause of an error met while opening it.
    pub(crate) fn opening(self, location: &crate::Location) -> StoreError {
        let path = match location {
            crate::Location::File(p) => p.display().to_string(),
            crate::Location::Remote { url, .. } => url.clone(),
        };
        match self {
            // These already name the path.
            StoreError::Unwritable { .. } | StoreError::Open { .. } | StoreError::Gone { .. } => {
                self
            }
            other => {
                let text = other.to_string().to_ascii_lowercase();
                let hint = if text.contains("401") || text.contains("jwt") {
                    " (the server refused the auth token: set database.auth_token or LUAMETRICS_DATABASE_AUTH_TOKEN to a valid, unexpired token for this server)"
                } else if text.contains("403") {
                    " (the auth token may not write: luametrics needs a read-write token)"
                } else if text.contains("connection refused")
                    || text.contains("dns error")
                    || text.contains("error trying to connect")
                {
                    " (the server did not answer: check the URL and that the server runs)"
                } else if text.contains("not a database") {
                    " (the file exists but is not a libSQL/SQLite database: point database.url at another path, or move the file away)"
                } else if text.contains("readonly") || text.contains("read-only") {
                    " (the file or its directory is read-only for this user: luametrics writes the file and its -wal and -shm files next to it)"
                } else if text.contains("unable to open") {
                    " (check that the directory exists and that this user may create files in it)"
                } else if text.contains("locked") || text.contains("busy") {
                    " (another process holds a lock on it: stop it or raise database.busy_timeout_ms)"
                } else if text.contains("malformed") || text.contains("corrupt") {
                    " (the file is damaged: restore it from a backup or move it away)"
                } else {
                    ""
                };
                StoreError::Open {
                    path,
                    hint,
                    source: Box::new(other),
                }
            }
        }
    }

    /// Whether a libSQL server interrupted the statement (`SQLITE_INTERRUPT` in its answer;
    /// libSQL's client keeps the server's error types private, so its code is read from them).
    pub(crate) fn is_remote_interrupt(&self) -> bool {
        match self {
            StoreError::Db {
                source: libsql::Error::Hrana(e),
                ..
            } => format!("{e:?}").contains("SQLITE_INTERRUPT"),
            _ => false,
        }
    }

    /// Whether retrying later may succeed (locked, busy, read-only, full, unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => match source {
                libsql::Error::SqliteFailure(code, _) => {
                    // Primary result codes: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8, IOERR 10,
                    // FULL 13, CANTOPEN 14, PROTOCOL 15.
                    matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15)
                }
                libsql::Error::ConnectionFailed(_) | libsql::Error::Hrana(_) => true,
                _ => false,
            },
            // The recorder recreates the file and retries.
            StoreError::Gone { .. } => true,
            StoreError::TimedOut { .. } => true,
            _ => false,
        }
    }
}
