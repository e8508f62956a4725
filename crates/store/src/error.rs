/// Why a store operation failed; every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database setting is neither a path nor a supported URL.
    #[error("unsupported database location `{0}`: use a file path, or a libsql://, http:// or https:// URL")]
    UnknownScheme(String),
    /// A remote database was configured without its token.
    #[error("remote database `{0}` needs an auth token (database.auth_token or LUAMETRICS_DATABASE_AUTH_TOKEN)")]
    MissingToken(String),
    /// The database file cannot be created or written.
    #[error("database path `{path}` is not writable: {reason}")]
    Unwritable {
        /// The configured path.
        path: String,
        /// What the filesystem said.
        reason: String,
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
    /// A retention setting is out of range.
    #[error("invalid retention setting: {0}")]
    InvalidRetention(String),
}

impl StoreError {
    /// Wraps a libSQL error with what was being done (for `map_err`).
    pub fn db(context: &'static str) -> impl FnOnce(libsql::Error) -> StoreError {
        move |source| StoreError::Db { context, source }
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
            _ => false,
        }
    }
}
