//! Where the database is: a local file or a libSQL server URL with its optional token, parsed
//! from the one `database.url` setting with errors that say what is wrong.

use crate::StoreError;
use libsql::{Builder, Database};
use std::path::PathBuf;

/// Where the database lives: an embedded file (the default) or a remote Turso/sqld server.
#[derive(Clone, PartialEq)]
pub enum Location {
    /// An embedded libSQL file (WAL mode).
    File(PathBuf),
    /// A remote libSQL server shared by a fleet of hosts.
    Remote {
        /// `libsql://`, `http://` or `https://` URL.
        url: String,
        /// Auth token for the server (a JWT for sqld and Turso); `None` for a server that
        /// requires none.
        token: Option<String>,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "File({})", p.display()),
            // Never print the token.
            Location::Remote { url, .. } => write!(f, "Remote({url})"),
        }
    }
}

impl Location {
    /// Reads a `database` setting: a path, or a URL with the server's token when it requires
    /// one (a server that refuses the connection fails the open, naming the URL).
    pub fn parse(database: &str, token: Option<&str>) -> Result<Self, StoreError> {
        let trimmed = database.trim();
        if trimmed.is_empty() {
            return Err(StoreError::UnknownScheme(database.to_string()));
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "libsql" | "http" | "https" => Ok(Location::Remote {
                    url: trimmed.to_string(),
                    token: token
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string),
                }),
                "file" => Ok(Location::File(PathBuf::from(&trimmed["file://".len()..]))),
                _ => Err(StoreError::UnknownScheme(trimmed.to_string())),
            };
        }
        Ok(Location::File(PathBuf::from(trimmed)))
    }

    /// Whether this is an embedded file (PRAGMAs and file checks apply).
    pub fn is_local(&self) -> bool {
        matches!(self, Location::File(_))
    }

    pub(crate) async fn build(&self) -> Result<Database, StoreError> {
        match self {
            Location::File(path) => {
                check_writable(path)?;
                // The file exists now (check_writable created it): never let libSQL create one,
                // so a connection opened after the file was deleted fails instead of quietly
                // starting an empty database at the path.
                Builder::new_local(path)
                    .flags(libsql::OpenFlags::SQLITE_OPEN_READ_WRITE)
                    .build()
                    .await
                    .map_err(|e| StoreError::Unwritable {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Location::Remote { url, token } => {
                // libSQL's client speaks HTTP(S); `libsql://` means HTTPS.
                let url = match url.strip_prefix("libsql://") {
                    Some(rest) => format!("https://{rest}"),
                    None => url.clone(),
                };
                Builder::new_remote(url, token.clone().unwrap_or_default())
                    .build()
                    .await
                    .map_err(StoreError::db("open remote database"))
            }
        }
    }
}

/// Fails early, with the path, where SQLite would fail later with a bare "unable to open".
fn check_writable(path: &std::path::Path) -> Result<(), StoreError> {
    let unwritable = |reason: String| StoreError::Unwritable {
        path: path.display().to_string(),
        reason,
    };
    if path.is_dir() {
        return Err(unwritable("it is a directory".into()));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(unwritable(format!(
                "parent directory `{}` does not exist",
                parent.display()
            )));
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|_| ())
        .map_err(|e| unwritable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        assert_eq!(
            Location::parse("./luametrics.db", None).unwrap(),
            Location::File("./luametrics.db".into())
        );
        assert!(matches!(
            Location::parse("libsql://db.example.turso.io", Some("tok")).unwrap(),
            Location::Remote { .. }
        ));
        let e = Location::parse("postgres://x/y", None).unwrap_err();
        assert!(e.to_string().contains("postgres://x/y"), "{e}");
        assert_eq!(
            Location::parse("https://db.example", None).unwrap(),
            Location::Remote {
                url: "https://db.example".into(),
                token: None
            }
        );
        assert_eq!(
            Location::parse("http://db.example", Some("  ")).unwrap(),
            Location::Remote {
                url: "http://db.example".into(),
                token: None
            }
        );
        let shown = format!(
            "{:?}",
            Location::parse("https://h", Some("secret-token")).unwrap()
        );
        assert!(!shown.contains("secret-token"));
    }
}
