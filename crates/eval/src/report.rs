//! Results: one [`TaskResult`] per task, printed as a Markdown table or as
//! JSON in the shape of lm-evaluation-harness's `results.json`.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    /// Standard error, where lm-eval defines one for the metric.
    pub stderr: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// lm-eval's task name where there is one (`lambada_openai`, `wikitext`).
    pub task: &'static str,
    pub metrics: Vec<Metric>,
    /// Examples or documents in the file, and how many were evaluated.
    pub original: usize,
    pub effective: usize,
    /// Tokens scored (targets), for throughput.
    pub tokens: usize,
    /// What was done to the data that a reader should know (counted
    /// truncations, skips), as sentences.
    pub notes: Vec<String>,
}

impl TaskResult {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// `{"results": {task: {"alias", "metric,none", "metric_stderr,none"}},
    /// "n-samples": {task: {"original", "effective"}}, "config": ...}`.
    pub fn to_json(&self, config: Value) -> Value {
        let mut metrics = Map::new();
        metrics.insert("alias".into(), json!(self.task));
        for m in &self.metrics {
            metrics.insert(format!("{},none", m.name), json!(m.value));
            let stderr = m.stderr.map_or(json!("N/A"), |s| json!(s));
            metrics.insert(format!("{}_stderr,none", m.name), stderr);
        }
        json!({
            "results": {self.task: metrics},
            "n-samples": {self.task: {"original": self.original, "effective": self.effective}},
            "tokens": {self.task: self.tokens},
            "notes": {self.task: self.notes},
            "config": config,
        })
    }

    /// lm-eval's table: one row per metric.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| Task | Metric | Value | Stderr | Samples |\n|---|---|---:|---:|---:|\n",
        );
        for m in &self.metrics {
            let stderr = m.stderr.map_or("N/A".to_string(), |s| format!("± {s:.4}"));
            out.push_str(&format!(
                "| {} | {} | {:.4} | {} | {} |\n",
                self.task, m.name, m.value, stderr, self.effective
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("\nNote: {note}\n"));
        }
        out
    }
}
