//! Samples and their percentiles: every timed call lands in a `Series`, failed ones too, so
//! that no failure is ever dropped from a figure.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies of the calls that succeeded, and what the others answered.
#[derive(Default, Clone)]
pub(crate) struct Series {
    pub took: Vec<Duration>,
    /// Failed calls by `<operation> <status> <code>`.
    pub errors: BTreeMap<String, usize>,
    /// The first `detail` of each kind of failure, to say what went wrong.
    pub details: BTreeMap<String, String>,
}

impl Series {
    pub(crate) fn ok(&mut self, took: Duration) {
        self.took.push(took);
    }

    pub(crate) fn fail(&mut self, label: String, detail: String) {
        *self.errors.entry(label.clone()).or_default() += 1;
        self.details.entry(label).or_insert(detail);
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    pub(crate) fn absorb(&mut self, other: Series) {
        self.took.extend(other.took);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, d) in other.details {
            self.details.entry(k).or_insert(d);
        }
    }

    pub(crate) fn pct(&self) -> Percentiles {
        Percentiles::of(&self.took)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles in milliseconds; `n = 0` and zeros for no samples.
    pub(crate) fn of(v: &[Duration]) -> Self {
        let mut v = v.to_vec();
        v.sort();
        let at = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            ms(v[rank - 1])
        };
        Self {
            n: v.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "n": self.n, "p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99, "max_ms": self.max })
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
