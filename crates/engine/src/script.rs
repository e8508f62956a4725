//! A script as the pool runs it: its id, its source shared by `Arc`, and the content hash the
//! engines' compile caches are keyed by (editing a script takes effect on the next run).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Largest script file read: far above any real script, and a bound on what a path such as
/// `/dev/zero` (endless) can make the host read into memory.
pub const MAX_SCRIPT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a file of at most `max` bytes: a larger or endless file is an `InvalidData` error
/// naming the bound, after reading at most `max + 1` bytes.
pub fn read_bytes_bounded(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file of at most `max` bytes (see [`read_bytes_bounded`]).
pub fn read_text_bounded(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bytes_bounded(path, max)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("stream did not contain valid UTF-8: {e}"),
        )
    })
}

/// A tenant script: an id for errors and metrics, and its source. Engines cache the compiled
/// function by content hash, so an edited script (a new `Script`) compiles on next use.
#[derive(Debug, Clone)]
pub struct Script {
    id: Arc<str>,
    source: Arc<str>,
    hash: u64,
    /// The compiled chunk, once compiled anywhere (by [`Script::check_syntax`] or an engine),
    /// shared by every clone: engines load it (linear in its size) instead of compiling the
    /// source again. Lua's compiler is quadratic on some inputs (a chain of 80,000 `and`
    /// operands took 7.9 s, in C, outside any execution's deadline: adversary round 15, each
    /// fresh engine compiling again, each time abandoned).
    compiled: Arc<std::sync::OnceLock<Arc<[u8]>>>,
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
            compiled: Arc::default(),
        }
    }

    /// The compiled chunk, if this script (or a clone) was compiled already.
    pub(crate) fn bytecode(&self) -> Option<&Arc<[u8]>> {
        self.compiled.get()
    }

    /// Keeps the compiled chunk for every clone of this script.
    pub(crate) fn keep_bytecode(&self, function: &mlua::Function) {
        if self.compiled.get().is_none() {
            // Not stripped: the engine finds `_ENV` by its upvalue's name, and errors keep
            // their lines.
            let _ = self.compiled.set(Arc::from(function.dump(false)));
        }
    }

    /// Whether the script was compiled already (by [`Script::check_syntax`] or an engine):
    /// engines then load the compiled chunk instead of compiling the source.
    pub fn is_compiled(&self) -> bool {
        self.compiled.get().is_some()
    }

    /// Reads a script file (at most [`MAX_SCRIPT_BYTES`]); the id is the file name.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let source = read_text_bounded(path, MAX_SCRIPT_BYTES)?;
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

    /// Compiles the script (text only, nothing run) in a bare Lua state, so a definitions file
    /// whose script does not compile is refused when it is loaded, with the script's line,
    /// rather than failing every execution of its node; the compiled chunk is kept for the
    /// engines.
    pub fn check_syntax(&self) -> Result<(), crate::ScriptError> {
        let syntax = |line: Option<u32>, message: String| crate::ScriptError::Syntax {
            script: self.id.to_string(),
            line,
            message,
        };
        let lua = mlua::Lua::new_with(mlua::StdLib::NONE, mlua::LuaOptions::new())
            .map_err(|e| syntax(None, format!("cannot build a Lua state to compile it: {e}")))?;
        match lua
            .load(&*self.source)
            .set_name(format!("={}", self.id))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function()
        {
            Ok(f) => {
                self.keep_bytecode(&f);
                Ok(())
            }
            Err(e) => {
                let text = match &e {
                    mlua::Error::SyntaxError { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                let first = text.lines().next().unwrap_or("").to_string();
                let rest = first
                    .strip_prefix(&*self.id)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|r| r.split_once(':'))
                    .and_then(|(n, m)| n.parse::<u32>().ok().map(|n| (n, m.trim().to_string())));
                let mut message = rest.as_ref().map_or(first.clone(), |(_, m)| m.clone());
                if message.len() > 512 {
                    let mut cut = 512;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                }
                Err(syntax(rest.map(|(n, _)| n), message))
            }
        }
    }
}
