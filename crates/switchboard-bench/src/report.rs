//! Results: one JSON object per scenario, and the same as a readable table.

use serde_json::Value;

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Machine-readable, one line on stdout with `--json`.
    pub json: Value,
    /// (metric, value) pairs for the readable summary.
    pub rows: Vec<(String, String)>,
    /// False when the run failed its own checks (loss, duplicates, failed connections, timeout).
    pub ok: bool,
}

impl Report {
    pub fn new(json: Value, ok: bool) -> Self {
        Report {
            json,
            rows: Vec::new(),
            ok,
        }
    }

    pub fn row(&mut self, metric: &str, value: impl Into<String>) {
        self.rows.push((metric.to_owned(), value.into()));
    }

    /// A two-column table with a title line.
    pub fn table(&self, title: &str) -> String {
        let width = self
            .rows
            .iter()
            .map(|(m, _)| m.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("== {title} ==\n");
        for (metric, value) in &self.rows {
            let pad = width - metric.chars().count();
            out.push_str(&format!("  {metric}{}  {value}\n", " ".repeat(pad)));
        }
        out
    }
}

/// Formats an optional number with `digits` decimals, `-` when absent.
pub fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_values() {
        let mut r = Report::new(serde_json::json!({}), true);
        r.row("a", "1");
        r.row("longer", "2");
        assert_eq!(r.table("t"), "== t ==\n  a       1\n  longer  2\n");
    }

    #[test]
    fn missing_numbers_render_as_dash() {
        assert_eq!(opt(None, 2), "-");
        assert_eq!(opt(Some(1.234), 1), "1.2");
    }
}
