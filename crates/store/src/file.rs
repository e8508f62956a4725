//! The database file's identity: SQLite keeps writing into a file that was unlinked or
//! replaced under it, without an error, so the store compares the path's file with the one it
//! opened before every write.

use crate::StoreError;
use std::path::Path;

/// What happened to the database file under an open store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFault {
    /// Nothing is at the path any more.
    Deleted,
    /// Another file is at the path.
    Replaced,
}

impl FileFault {
    /// Stable snake_case code (health reasons, log fields).
    pub fn as_str(self) -> &'static str {
        match self {
            FileFault::Deleted => "deleted",
            FileFault::Replaced => "replaced",
        }
    }
}

impl std::fmt::Display for FileFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Device and inode of a file (Unix); elsewhere the path's existence only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(Self {
                dev: meta.dev(),
                ino: meta.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Ok(Self { dev: 0, ino: 0 })
        }
    }

    /// `Err(Gone)` when the path no longer names the file this identity was taken from.
    pub(crate) fn check(&self, path: &Path) -> Result<(), StoreError> {
        let gone = |fault| StoreError::Gone {
            path: path.display().to_string(),
            fault,
        };
        match Self::of(path) {
            Ok(now) if now == *self => Ok(()),
            Ok(_) => Err(gone(FileFault::Replaced)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone(FileFault::Deleted)),
            Err(e) => Err(StoreError::Unwritable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}
