//! The one table: a row per measurement with its percentiles (or single value), throughput,
//! errors, the baseline it is compared with, the ratio, the goal and whether it is met.
//! Rendered as Markdown and as JSON from the same rows.

use super::stats::{Percentiles, Series};
use serde_json::{json, Value};
use std::fmt::Write as _;

#[derive(Default)]
pub(crate) struct Row {
    pub measurement: String,
    pub latency: Option<Percentiles>,
    /// A single figure instead of percentiles, with its unit.
    pub value: Option<(f64, &'static str)>,
    pub throughput: Option<(f64, &'static str)>,
    pub errors: Option<usize>,
    /// What it is compared with, as text, and that figure's value.
    pub baseline: Option<(String, f64)>,
    /// Baseline ÷ figure for times ("× faster"), figure ÷ baseline for rates and the
    /// 5,000-versus-10 growth, as the `ratio_kind` says.
    pub ratio: Option<(f64, &'static str)>,
    pub goal: Option<String>,
    pub met: Option<bool>,
    /// Figures for the JSON only.
    pub extra: Option<Value>,
}

impl Row {
    pub(crate) fn new(measurement: impl Into<String>) -> Self {
        Self {
            measurement: measurement.into(),
            ..Default::default()
        }
    }

    pub(crate) fn series(mut self, s: &Series) -> Self {
        self.latency = Some(s.pct());
        self.errors = Some(s.error_count());
        self
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "measurement": self.measurement,
            "latency": self.latency.map(|p| p.json()),
            "value": self.value.map(|(v, unit)| json!({ "value": v, "unit": unit })),
            "throughput": self.throughput.map(|(v, unit)| json!({ "value": v, "unit": unit })),
            "errors": self.errors,
            "baseline": self.baseline.as_ref().map(|(what, v)| json!({ "what": what, "value": v })),
            "ratio": self.ratio.map(|(r, kind)| json!({ "value": r, "kind": kind })),
            "goal": self.goal,
            "met": self.met,
            "extra": self.extra,
        })
    }
}

pub(crate) fn fmt_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" => fmt_ms(v),
        "MB" => format!("{v:.1} MB"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn fmt_ratio(r: f64, kind: &str) -> String {
    let n = if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    };
    match kind {
        "faster" if r < 1.0 => format!("{:.2}× slower", 1.0 / r),
        "faster" => format!("{n}× faster"),
        "of_baseline" => format!("{:.0}% of it", r * 100.0),
        _ => format!("{n}×"),
    }
}

pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut t = String::from(
        "| measurement | n | p50 (or value) | p95 | p99 | throughput | errors | baseline | vs baseline | goal | met? |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n",
    );
    let dash = || "—".to_owned();
    for r in rows {
        let (n, p50, p95, p99) = match (&r.latency, &r.value) {
            (Some(p), _) => (p.n.to_string(), fmt_ms(p.p50), fmt_ms(p.p95), fmt_ms(p.p99)),
            (None, Some((v, unit))) => ("1".into(), fmt_value(*v, unit), dash(), dash()),
            (None, None) => (dash(), dash(), dash(), dash()),
        };
        let _ = writeln!(
            t,
            "| {} | {n} | {p50} | {p95} | {p99} | {} | {} | {} | {} | {} | {} |",
            r.measurement.replace('|', "\\|"),
            r.throughput
                .map_or_else(dash, |(v, unit)| format!("{v:.1} {unit}")),
            r.errors.map_or_else(dash, |e| e.to_string()),
            r.baseline
                .as_ref()
                .map_or_else(dash, |(what, _)| what.clone()),
            r.ratio.map_or_else(dash, |(v, kind)| fmt_ratio(v, kind)),
            r.goal.clone().unwrap_or_else(dash),
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
        );
    }
    t
}
