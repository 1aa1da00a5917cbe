//! Watchers that run beside a load: a reader timing the cheap endpoints one request at a time
//! (do reads still answer while the service is busy?), and a sampler of what the server's
//! sessions are doing (where does a level's time go?).

use super::client::Api;
use super::setup::Cluster;
use super::stats::Series;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Reader {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, Series>>,
}

impl Reader {
    /// Times each of `paths` in turn, 10 ms apart, until stopped.
    pub(crate) fn start(api: &Api, paths: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, api) = (stop.clone(), api.clone());
        let task = tokio::spawn(async move {
            let mut out: BTreeMap<String, Series> = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                for path in &paths {
                    let (answer, took) = api.timed(api.get(path)).await;
                    let s = out.entry(path.clone()).or_default();
                    if answer.is(200) {
                        s.ok(took);
                    } else {
                        s.fail(answer.label("read"), answer.detail());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out
        });
        Self { stop, task }
    }

    pub(crate) async fn stop(self) -> BTreeMap<String, Series> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Sessions other than this one, by what they are doing: the control store's by state, the
/// target's active ones by their statement's first words and what they wait on.
const ACTIVITY: &str = "\
    SELECT CASE \
      WHEN datname = 'previewdb' THEN 'control store: ' || coalesce(state, '?') \
      WHEN state = 'active' THEN 'target: ' || \
        upper(array_to_string((regexp_split_to_array(ltrim(query), '\\s+'))[1:2], ' ')) || \
        coalesce(' (waits: ' || wait_event_type || '/' || wait_event || ')', '') \
      ELSE 'target: ' || coalesce(state, '?') END, count(*) \
    FROM pg_stat_activity \
    WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' \
    GROUP BY 1";

pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, BTreeMap<String, f64>)>,
}

impl Sampler {
    pub(crate) async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let client = cluster.admin("postgres").await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut samples, mut sum) = (0usize, BTreeMap::<String, f64>::new());
            while !flag.load(Ordering::Relaxed) {
                if let Ok(rows) = client.query(ACTIVITY, &[]).await {
                    for row in rows {
                        *sum.entry(row.get(0)).or_default() += row.get::<_, i64>(1) as f64;
                    }
                    samples += 1;
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            sum.values_mut().for_each(|v| *v /= samples.max(1) as f64);
            (samples, sum)
        });
        Ok(Self { stop, task })
    }

    /// Mean sessions per activity over the samples, as JSON, and the top `n` as one line.
    pub(crate) async fn stop(self, n: usize) -> (Value, String) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, mean) = self.task.await.unwrap_or_default();
        let mut top: Vec<(&String, &f64)> = mean.iter().filter(|(_, v)| **v >= 0.05).collect();
        top.sort_by(|a, b| b.1.total_cmp(a.1));
        let line = top
            .iter()
            .take(n)
            .map(|(k, v)| format!("{v:.1} {k}"))
            .collect::<Vec<_>>()
            .join("; ");
        (json!({ "samples": samples, "sessions_mean": mean }), line)
    }
}
