//! Pipeline definitions: the TOML file validated into pipelines whose nodes are sorted into
//! DAG layers, with errors naming the file, the pipeline, the node and the field.

use luametrics_engine::Script;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest node timeout accepted (ms): a node is a script, not a batch job.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// Why a pipelines file cannot be used; says which file, pipeline and field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The file could not be read.
    #[error("{file}: cannot read: {problem}")]
    Read {
        /// The pipelines file.
        file: String,
        /// What the filesystem said.
        problem: String,
    },
    /// The TOML is malformed or has unknown or mistyped fields.
    #[error("{file}: {problem}")]
    Syntax {
        /// The pipelines file.
        file: String,
        /// The parser's message (with line and column).
        problem: String,
    },
    /// A definition breaks a rule.
    #[error("{file}: pipeline `{pipeline}`{}: field `{field}`: {problem}", node.as_ref().map(|n| format!(", node `{n}`")).unwrap_or_default())]
    Invalid {
        /// The pipelines file.
        file: String,
        /// The pipeline id (or its position when the id is missing).
        pipeline: String,
        /// The node id, when the problem is in a node.
        node: Option<String>,
        /// The offending field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a node's error does to its pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The pipeline stops with an error decision.
    #[default]
    Fail,
    /// The error is recorded and the pipeline goes on.
    Continue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pipeline: Vec<RawPipeline>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    id: String,
    trigger: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    script: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    after: Vec<String>,
}

/// One node: a script with its timeout and error policy.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id, unique in its pipeline.
    pub id: String,
    /// The script (id = file name, used as `script_id` in metrics).
    pub script: Script,
    /// The script file.
    pub path: PathBuf,
    /// Time limit of this node's execution (None: the engine default).
    pub timeout_ms: Option<u64>,
    /// What an error does.
    pub on_error: OnError,
    /// Nodes that must finish first.
    pub after: Vec<String>,
}

/// A validated pipeline with its execution layers.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline id.
    pub id: String,
    /// The event that runs it.
    pub trigger: String,
    /// Free text.
    pub description: String,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    /// Node indexes by layer: every node's `after` nodes are in earlier layers.
    pub layers: Vec<Vec<usize>>,
}

/// All pipelines of a file, by trigger.
#[derive(Debug, Clone, Default)]
pub struct Pipelines {
    /// The file they came from.
    pub file: PathBuf,
    by_trigger: HashMap<String, Arc<Pipeline>>,
    order: Vec<String>,
    /// Files read (the definitions and every script), for change detection.
    pub sources: Vec<PathBuf>,
}

impl Pipelines {
    /// Reads and validates a pipelines file; script paths are relative to its directory.
    pub fn load(file: &Path) -> Result<Self, PipelineError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| PipelineError::Read {
            file: name.clone(),
            problem: e.to_string(),
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &name, base, file)
    }

    fn parse(text: &str, name: &str, base: &Path, file: &Path) -> Result<Self, PipelineError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PipelineError::Syntax {
            file: name.to_string(),
            problem: e.to_string().trim().replace('\n', " "),
        })?;
        let mut out = Pipelines {
            file: file.to_path_buf(),
            sources: vec![file.to_path_buf()],
            ..Default::default()
        };
        let mut ids = HashSet::new();
        for (i, p) in raw.pipeline.into_iter().enumerate() {
            let pid = if p.id.trim().is_empty() {
                format!("#{}", i + 1)
            } else {
                p.id.clone()
            };
            let bad = |node: Option<&str>, field: &str, problem: String| PipelineError::Invalid {
                file: name.to_string(),
                pipeline: pid.clone(),
                node: node.map(str::to_string),
                field: field.to_string(),
                problem,
            };
            if p.id.trim().is_empty() {
                return Err(bad(None, "id", "must not be empty".into()));
            }
            if !ids.insert(p.id.clone()) {
                return Err(bad(None, "id", "duplicate pipeline id".into()));
            }
            if p.trigger.trim().is_empty() {
                return Err(bad(None, "trigger", "must not be empty".into()));
            }
            if let Some(other) = out.by_trigger.get(&p.trigger) {
                return Err(bad(
                    None,
                    "trigger",
                    format!(
                        "`{}` is already handled by pipeline `{}`",
                        p.trigger, other.id
                    ),
                ));
            }
            if p.node.is_empty() {
                return Err(bad(
                    None,
                    "node",
                    "a pipeline needs at least one node".into(),
                ));
            }
            let mut nodes = Vec::new();
            let mut node_ids = HashSet::new();
            for n in &p.node {
                if n.id.trim().is_empty() {
                    return Err(bad(None, "node.id", "must not be empty".into()));
                }
                if !node_ids.insert(n.id.clone()) {
                    return Err(bad(Some(&n.id), "id", "duplicate node id".into()));
                }
                if let Some(t) = n.timeout_ms {
                    if t == 0 || t > MAX_TIMEOUT_MS {
                        return Err(bad(
                            Some(&n.id),
                            "timeout_ms",
                            format!("{t} is out of range (1 to {MAX_TIMEOUT_MS})"),
                        ));
                    }
                }
                let path = base.join(&n.script);
                let script = Script::from_file(&path).map_err(|e| {
                    bad(
                        Some(&n.id),
                        "script",
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })?;
                script.check_syntax().map_err(|e| {
                    bad(
                        Some(&n.id),
                        "script",
                        format!("`{}` does not compile: {e}", path.display()),
                    )
                })?;
                label(&[("script_id", script.id())])
                    .map_err(|problem| bad(Some(&n.id), "script", problem))?;
                out.sources.push(path.clone());
                nodes.push(Node {
                    id: n.id.clone(),
                    script,
                    path,
                    timeout_ms: n.timeout_ms,
                    on_error: n.on_error,
                    after: n.after.clone(),
                });
            }
            for n in &nodes {
                for a in &n.after {
                    if !node_ids.contains(a) {
                        return Err(bad(Some(&n.id), "after", format!("unknown node `{a}`")));
                    }
                    if a == &n.id {
                        return Err(bad(
                            Some(&n.id),
                            "after",
                            "a node cannot follow itself".into(),
                        ));
                    }
                }
            }
            let layers = layers(&nodes).map_err(|cycle| {
                bad(
                    Some(&cycle[0]),
                    "after",
                    format!("cycle between nodes {}", cycle.join(", ")),
                )
            })?;
            label(&[("pipeline_id", &p.id)]).map_err(|problem| bad(None, "id", problem))?;
            label(&[("trigger_event", &p.trigger)])
                .map_err(|problem| bad(None, "trigger", problem))?;
            out.order.push(p.trigger.clone());
            out.by_trigger.insert(
                p.trigger.clone(),
                Arc::new(Pipeline {
                    id: p.id,
                    trigger: p.trigger,
                    description: p.description,
                    nodes,
                    layers,
                }),
            );
        }
        Ok(out)
    }

    /// The pipeline a trigger runs.
    pub fn for_trigger(&self, trigger: &str) -> Option<&Arc<Pipeline>> {
        self.by_trigger.get(trigger)
    }

    /// Pipelines in file order.
    pub fn all(&self) -> Vec<&Arc<Pipeline>> {
        self.order
            .iter()
            .filter_map(|t| self.by_trigger.get(t))
            .collect()
    }

    /// Number of pipelines.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the file defines none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Kahn's algorithm by layers; on a cycle, returns the nodes left on it.
fn layers(nodes: &[Node]) -> Result<Vec<Vec<usize>>, Vec<String>> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = nodes.iter().map(|n| n.after.len()).collect();
    let mut placed = vec![false; nodes.len()];
    let mut out = Vec::new();
    let mut done = 0;
    while done < nodes.len() {
        let layer: Vec<usize> = (0..nodes.len())
            .filter(|&i| !placed[i] && indegree[i] == 0)
            .collect();
        if layer.is_empty() {
            return Err((0..nodes.len())
                .filter(|&i| !placed[i])
                .map(|i| nodes[i].id.clone())
                .collect());
        }
        for &i in &layer {
            placed[i] = true;
            done += 1;
        }
        for (j, n) in nodes.iter().enumerate() {
            if !placed[j] {
                indegree[j] = n
                    .after
                    .iter()
                    .filter(|a| index.get(a.as_str()).is_some_and(|&k| !placed[k]))
                    .count();
            }
        }
        out.push(layer);
    }
    Ok(out)
}

/// Checks values that label a pipeline's own metrics (`pipeline.exec.duration`,
/// `script.exec.duration_ms`) as the recorder will: one it refuses (not in Unicode NFC, a
/// control or invisible character, a shape of personal data) would have every point of those
/// metrics counted rejected, silently for the operator; refused at load, it is named.
fn label(tags: &[(&str, &str)]) -> Result<(), String> {
    let tags: luametrics_model::Tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    luametrics_model::TagPolicy::default()
        .check_system_tags(&tags)
        .map_err(|reason| {
            let shown: Vec<String> = tags.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
            format!(
                "{} cannot label the pipeline's metrics ({}): use printable text in Unicode NFC",
                shown.join(", "),
                reason.as_str()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(
        toml: &str,
        scripts: &[&str],
    ) -> (tempfile::TempDir, Result<Pipelines, PipelineError>) {
        let dir = tempfile::tempdir().unwrap();
        for s in scripts {
            std::fs::write(dir.path().join(s), "return nil").unwrap();
        }
        let file = dir.path().join("pipelines.toml");
        std::fs::write(&file, toml).unwrap();
        let r = Pipelines::load(&file);
        (dir, r)
    }

    const OK: &str = r#"
[[pipeline]]
id = "login"
trigger = "user.login"
[[pipeline.node]]
id = "a"
script = "a.lua"
[[pipeline.node]]
id = "b"
script = "b.lua"
after = ["a"]
timeout_ms = 20
on_error = "continue"
[[pipeline.node]]
id = "c"
script = "a.lua"
[[pipeline.node]]
id = "d"
script = "b.lua"
after = ["b", "c"]
"#;

    #[test]
    fn layers_follow_the_dag() {
        let (_d, r) = setup(OK, &["a.lua", "b.lua"]);
        let p = r.unwrap();
        let login = p.for_trigger("user.login").unwrap();
        assert_eq!(login.layers, vec![vec![0, 2], vec![1], vec![3]]);
        assert_eq!(login.nodes[1].on_error, OnError::Continue);
        assert_eq!(login.nodes[1].timeout_ms, Some(20));
        assert_eq!(login.nodes[0].script.id(), "a.lua");
        assert_eq!(p.sources.len(), 5);
    }

    fn err(toml: &str) -> String {
        let (_d, r) = setup(toml, &["a.lua", "b.lua"]);
        r.unwrap_err().to_string()
    }

    // Reviewer finding: a pipeline id or trigger not in NFC (decomposed, as some editors and
    // file systems write them) loaded fine, then every point of the pipeline's own metrics
    // was refused by the recorder's label rules, with one log line.
    #[test]
    fn values_that_cannot_label_metrics_are_refused_at_load() {
        for (from, to, field) in [
            ("id = \"login\"", "id = \"logi\u{301}n\"", "field `id`"),
            (
                "trigger = \"user.login\"",
                "trigger = \"user\u{200b}.login\"",
                "field `trigger`",
            ),
        ] {
            let e = err(&OK.replace(from, to));
            assert!(e.contains(field) && e.contains("cannot label"), "{e}");
        }
        // A script file name that is not NFC.
        let toml = OK.replace("script = \"b.lua\"", "script = \"be\u{301}.lua\"");
        let (_d, r) = setup(&toml, &["a.lua", "be\u{301}.lua"]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("field `script`") && e.contains("cannot label"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_name_file_pipeline_and_field() {
        let e = err(&OK.replace("after = [\"a\"]", "after = [\"d\"]"));
        assert!(
            e.contains("pipeline `login`") && e.contains("field `after`") && e.contains("cycle"),
            "{e}"
        );
        assert!(e.contains("pipelines.toml"), "{e}");
        let e = err(&OK.replace("after = [\"a\"]", "after = [\"zz\"]"));
        assert!(
            e.contains("node `b`") && e.contains("unknown node `zz`"),
            "{e}"
        );
        let e = err(&OK.replace(
            "script = \"b.lua\"\nafter",
            "script = \"missing.lua\"\nafter",
        ));
        assert!(
            e.contains("node `b`") && e.contains("field `script`") && e.contains("missing.lua"),
            "{e}"
        );
        let e = err(&OK.replace("timeout_ms = 20", "timeout_ms = 0"));
        assert!(
            e.contains("field `timeout_ms`") && e.contains("out of range"),
            "{e}"
        );
        let e = err(&OK.replace("id = \"c\"", "id = \"a\""));
        assert!(
            e.contains("node `a`") && e.contains("duplicate node id"),
            "{e}"
        );
        let e = err(&format!("{OK}\n[[pipeline]]\nid = \"login\"\ntrigger = \"x\"\n[[pipeline.node]]\nid = \"a\"\nscript = \"a.lua\"\n"));
        assert!(e.contains("duplicate pipeline id"), "{e}");
        let e = err(&format!("{OK}\n[[pipeline]]\nid = \"other\"\ntrigger = \"user.login\"\n[[pipeline.node]]\nid = \"a\"\nscript = \"a.lua\"\n"));
        assert!(
            e.contains("pipeline `other`") && e.contains("field `trigger`"),
            "{e}"
        );
        let e = err(&OK.replace("on_error = \"continue\"", "on_error = \"retry\""));
        assert!(e.contains("pipelines.toml") && e.contains("retry"), "{e}");
        let e = err(&OK.replace("timeout_ms = 20", "timeout = 20"));
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = err("[[pipeline]]\nid = \"x\"\ntrigger = \"t\"\n");
        assert!(e.contains("at least one node"), "{e}");
        let (_d, r) = setup("", &[]);
        assert!(r.unwrap().is_empty());
        let e = Pipelines::load(Path::new("/no/such/pipelines.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/pipelines.toml"), "{e}");
    }
}
