//! What a run gathers node by node: each node's result settled into its report, its span and
//! its metrics, and its effect on the pipeline (the merged context, a block, a failure and
//! `on_error`), with results interpreted and bounded (`apply_result`, `preview`, `clip`).

use super::*;

/// What a pipeline run has gathered so far: the merged context, the decision, warnings, and
/// each node's report and span once it ran.
pub(super) struct Progress {
    pub(super) context: Map<String, Json>,
    pub(super) decision: Decision,
    /// The layer of a chain running now (set and cleared on the runner).
    pub(super) running: Option<usize>,
    pub(super) warnings: Vec<Warning>,
    pub(super) reports: Vec<Option<NodeReport>>,
    pub(super) spans: Vec<Option<SpanRecord>>,
}

impl Progress {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            context: Map::new(),
            decision: Decision::Allow,
            running: None,
            warnings: Vec::new(),
            reports: vec![None; nodes],
            spans: vec![None; nodes],
        }
    }

    /// Takes node `i`'s result in: its report, span and system metrics, and its effect on the
    /// context and the decision. Runs where the node ran (a runner, for a chain).
    pub(super) fn settle(
        &mut self,
        series: &PipelineSeries,
        pipeline: &Pipeline,
        i: usize,
        node_start: i64,
        result: NodeResult,
    ) {
        let node = &pipeline.nodes[i];
        let (report, outcome) = node_report(node.id.as_str(), node.script.id(), result);
        let span = SpanRecord {
            node_id: node.id.clone(),
            script_id: node.script.id().to_string(),
            status: report.status.as_str().to_string(),
            started_at_ms: node_start,
            total_ms: report.timings.total_ms,
            wait_ms: report.timings.wait_ms,
            script_ms: report.timings.script_ms,
            helpers_ms: report.timings.helpers_ms,
            overhead_ms: report.timings.overhead_ms,
            error: report.error.clone(),
        };
        // Refused points are counted by the recorder; they never fail the execution.
        series.node_overhead[i].record(report.timings.overhead_ms);
        series.node_duration[i].record(report.timings.script_ms);
        let (context, decision, warnings) =
            (&mut self.context, &mut self.decision, &mut self.warnings);
        match outcome {
            NodeOutcome::Value(v) => {
                if let Err(w) = apply_result(&node.id, v, context, decision) {
                    warnings.push(Warning {
                        node: node.id.clone(),
                        code: "result_ignored".into(),
                        metric: None,
                        reason: "invalid_result".into(),
                        count: 1,
                        message: w,
                    });
                }
            }
            NodeOutcome::Failed { code, message } => {
                // A refusal of the tenant (its line full, its budget spent) is not the node's
                // failure: the pipeline fails whatever `on_error` says, so nothing is skipped
                // silently.
                let refused = code == "queue_full" || code == "tenant_budget";
                if (node.on_error == OnError::Fail || refused)
                    && !matches!(decision, Decision::Error { .. })
                {
                    *decision = Decision::Error {
                        node: node.id.clone(),
                        code,
                        message,
                    };
                } else {
                    warnings.push(Warning {
                        node: node.id.clone(),
                        code: "node_failed".into(),
                        metric: None,
                        message: format!(
                            "node `{}` failed ({code}) and was skipped: {message}",
                            node.id
                        ),
                        reason: code,
                        count: 1,
                    });
                }
            }
        }
        warnings.extend(report.warnings.iter().map(|w| Warning {
            node: node.id.clone(),
            code: "metric_rejected".into(),
            metric: Some(w.metric.clone()),
            reason: w.reason.clone(),
            count: w.count,
            message: format!(
                "{}: metric rejected: {}: {} (x{})",
                node.id, w.metric, w.reason, w.count
            ),
        }));
        self.reports[i] = Some(report);
        self.spans[i] = Some(span);
    }
}

/// A node's report and what its result means for the pipeline.
pub(super) fn node_report(
    node: &str,
    script: &str,
    result: NodeResult,
) -> (NodeReport, NodeOutcome) {
    {
        match result {
            NodeResult::Ran(ex) => {
                let ex = *ex;
                let (status, error, outcome) = match ex.result {
                    Ok(v) => {
                        let blocked = matches!(&v, Json::Object(m) if m.get("allow") == Some(&Json::Bool(false)));
                        (
                            if blocked {
                                NodeStatus::Blocked
                            } else {
                                NodeStatus::Ok
                            },
                            None,
                            NodeOutcome::Value(v),
                        )
                    }
                    Err(e) => {
                        let status = if matches!(e, ScriptError::Timeout { .. }) {
                            NodeStatus::Timeout
                        } else {
                            NodeStatus::Error
                        };
                        let message = e.to_string();
                        (
                            status,
                            Some(message.clone()),
                            NodeOutcome::Failed {
                                code: e.code().to_string(),
                                message,
                            },
                        )
                    }
                };
                (
                    NodeReport {
                        node: node.to_string(),
                        script: script.to_string(),
                        status,
                        error,
                        timings: ex.timings,
                        accepted: ex.metrics.accepted,
                        dropped: ex.metrics.dropped,
                        rejected: ex.metrics.rejected,
                        log: ex.log,
                        warnings: ex.warnings,
                    },
                    outcome,
                )
            }
            NodeResult::PoolFailed(e, waited) => {
                let message = e.to_string();
                let code = e.code();
                (
                    NodeReport {
                        node: node.to_string(),
                        script: script.to_string(),
                        status: NodeStatus::Error,
                        error: Some(message.clone()),
                        timings: Timings {
                            wait_ms: waited,
                            total_ms: waited,
                            ..Timings::default()
                        },
                        accepted: 0,
                        dropped: 0,
                        rejected: BTreeMap::new(),
                        log: Vec::new(),
                        warnings: Vec::new(),
                    },
                    NodeOutcome::Failed {
                        code: code.into(),
                        message,
                    },
                )
            }
        }
    }
}

pub(super) enum NodeOutcome {
    Value(Json),
    Failed { code: String, message: String },
}

/// Interprets a node's return value: nothing, `{ allow = false, reason = ... }` or
/// `{ context = { ... } }`.
pub(super) fn apply_result(
    node: &str,
    v: Json,
    context: &mut Map<String, Json>,
    decision: &mut Decision,
) -> Result<(), String> {
    match v {
        Json::Null => Ok(()),
        Json::Object(mut m) => {
            if m.get("allow") == Some(&Json::Bool(false)) {
                if !matches!(decision, Decision::Block { .. } | Decision::Error { .. }) {
                    // A script's text for operators and traces: printable, at most 256 bytes.
                    let reason = match m.remove("reason") {
                        Some(Json::String(s)) => clip(&printable(&s), 256),
                        Some(other) => preview(&other),
                        None => "blocked".to_string(),
                    };
                    *decision = Decision::Block {
                        reason,
                        node: node.to_string(),
                    };
                }
                return Ok(());
            }
            match m.remove("context") {
                Some(Json::Object(c)) => {
                    context.extend(c);
                    Ok(())
                }
                Some(other) => Err(format!("node `{node}` returned a context that is not a table: {}", preview(&other))),
                None => Ok(()),
            }
        }
        other => Err(format!("node `{node}` returned {}; expected nothing, {{ allow = false }} or {{ context = {{...}} }}", preview(&other))),
    }
}

/// A returned value as at most 120 bytes of JSON, for a warning: a script's result must not
/// make a warning (or the trace that keeps it) as large as the result.
fn preview(v: &Json) -> String {
    clip(&v.to_string(), 120)
}

/// `text` cut to at most `max` bytes on a character boundary, with a marker when cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}
