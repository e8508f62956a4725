//! The pipelines in force, swapped whole on reload: an execution keeps the definitions it
//! started with while a reload (of a changed file or script) installs new ones.

use crate::{PipelineError, Pipelines};
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The pipelines in force, swapped whole on reload: executions in flight keep the version they
/// started with; the next one sees the new definitions and scripts.
pub struct Registry {
    file: PathBuf,
    current: RwLock<Arc<Pipelines>>,
    fingerprint: RwLock<Vec<(PathBuf, Option<SystemTime>, u64)>>,
    last_error: RwLock<Option<PipelineError>>,
}

fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (
                p.clone(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

impl Registry {
    /// Loads the pipelines file.
    pub fn load(file: &Path) -> Result<Self, PipelineError> {
        let p = Pipelines::load(file)?;
        let fp = fingerprint(&p.sources);
        Ok(Self {
            file: file.to_path_buf(),
            current: RwLock::new(Arc::new(p)),
            fingerprint: RwLock::new(fp),
            last_error: RwLock::new(None),
        })
    }

    /// The definitions in force.
    pub fn current(&self) -> Arc<Pipelines> {
        self.current.read().clone()
    }

    /// Re-reads the file and every script; on error the old definitions stay in force.
    pub fn reload(&self) -> Result<Arc<Pipelines>, PipelineError> {
        match Pipelines::load(&self.file) {
            Ok(p) => {
                let p = Arc::new(p);
                *self.fingerprint.write() = fingerprint(&p.sources);
                *self.current.write() = p.clone();
                *self.last_error.write() = None;
                Ok(p)
            }
            Err(e) => {
                *self.fingerprint.write() = fingerprint(&self.current().sources);
                *self.last_error.write() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Reloads when the file or a script changed since the last load; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, PipelineError> {
        let sources = self.current().sources.clone();
        let now = fingerprint(&sources);
        if now == *self.fingerprint.read() {
            return Ok(false);
        }
        self.reload().map(|_| true)
    }

    /// The error of the last failed reload, if the last reload failed.
    pub fn last_error(&self) -> Option<PipelineError> {
        self.last_error.read().clone()
    }
}
