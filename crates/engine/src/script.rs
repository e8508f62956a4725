use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A tenant script: an id for errors and metrics, and its source. Engines cache the compiled
/// function by content hash, so an edited script (a new `Script`) compiles on next use.
#[derive(Debug, Clone)]
pub struct Script {
    id: Arc<str>,
    source: Arc<str>,
    hash: u64,
}

impl Script {
    /// A script from its id (used in error messages, e.g. `count_logins.lua:3:`) and source.
    pub fn new(id: impl Into<Arc<str>>, source: impl Into<Arc<str>>) -> Self {
        let source: Arc<str> = source.into();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        Self {
            id: id.into(),
            hash: h.finish(),
            source,
        }
    }

    /// Reads a script file; the id is the file name.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let source = std::fs::read_to_string(path)?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self::new(id, source))
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The source text.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// Content hash (the compile-cache key).
    pub fn hash(&self) -> u64 {
        self.hash
    }
}
