//! What the server does by itself, with no service in between: cloning a built template with
//! each `CREATE DATABASE … STRATEGY`, and the rate of clone+drop pairs — the ceiling any pool
//! refill is held to.

use super::setup::Cluster;
use super::stats::Series;
use postgres_protocol::escape::escape_identifier;
use std::time::{Duration, Instant};

/// The finished template holding blueprint content `hash` (copies of one blueprint under other
/// names share it).
pub(crate) async fn template_of(cluster: &Cluster, hash: &str) -> anyhow::Result<String> {
    let rows = cluster
        .admin("postgres")
        .await?
        .query(
            "SELECT datname FROM pg_database WHERE datistemplate \
             AND starts_with(datname, 'pdb_tpl_') AND right(datname, length($1)) = $1",
            &[&hash],
        )
        .await?;
    anyhow::ensure!(
        rows.len() == 1,
        "expected one template database pdb_tpl_…_{hash} in pg_database, found {}",
        rows.len()
    );
    Ok(rows[0].get(0))
}

/// `rounds` clones of `template` with each strategy, taking turns so that neither gets the
/// server in a state the other left it in more often; each clone is dropped again (not timed).
/// One untimed clone of each comes first: the first after a build also flushes the template.
pub(crate) async fn strategies(
    cluster: &Cluster,
    template: &str,
    strategies: &[&'static str],
    rounds: usize,
) -> anyhow::Result<Vec<Series>> {
    let client = cluster.admin("postgres").await?;
    let mut out = vec![Series::default(); strategies.len()];
    for round in 0..=rounds {
        for (k, strategy) in strategies.iter().enumerate() {
            let db = escape_identifier(&format!(
                "bench_strategy_{}_{round}",
                strategy.to_lowercase()
            ));
            let t = Instant::now();
            let created = client
                .batch_execute(&format!(
                    "CREATE DATABASE {db} TEMPLATE {} STRATEGY {strategy}",
                    escape_identifier(template)
                ))
                .await;
            let took = t.elapsed();
            match created {
                Ok(()) if round > 0 => out[k].ok(took),
                Ok(()) => {}
                Err(e) => {
                    out[k].fail(
                        format!("CREATE DATABASE … STRATEGY {strategy}"),
                        e.to_string(),
                    );
                    continue;
                }
            }
            client.batch_execute(&format!("DROP DATABASE {db}")).await?;
        }
    }
    Ok(out)
}

/// The size of a database, in bytes.
pub(crate) async fn size(cluster: &Cluster, db: &str) -> anyhow::Result<i64> {
    Ok(cluster
        .admin("postgres")
        .await?
        .query_one("SELECT pg_database_size($1)", &[&db])
        .await?
        .get(0))
}

pub(crate) struct Ceiling {
    pub sessions: usize,
    pub pairs: Series,
    pub wall: Duration,
}

impl Ceiling {
    pub(crate) fn rate(&self) -> f64 {
        self.pairs.took.len() as f64 / self.wall.as_secs_f64()
    }
}

/// `sessions` admin sessions cloning `template` (the default strategy, as the service would
/// without being told) and dropping the clone, starting no new pair after `run`.
pub(crate) async fn ceiling(
    cluster: &Cluster,
    template: &str,
    sessions: usize,
    run: Duration,
) -> anyhow::Result<Ceiling> {
    let started = Instant::now();
    let stop_at = started + run;
    let mut workers = vec![];
    for w in 0..sessions {
        let client = cluster.admin("postgres").await?;
        let template = escape_identifier(template);
        workers.push(tokio::spawn(async move {
            let mut s = Series::default();
            let mut i = 0;
            while Instant::now() < stop_at {
                let db = escape_identifier(&format!("bench_raw_{sessions}_{w}_{i}"));
                i += 1;
                let t = Instant::now();
                let pair = async {
                    client
                        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE {template}"))
                        .await?;
                    client.batch_execute(&format!("DROP DATABASE {db}")).await
                };
                match pair.await {
                    Ok(()) => s.ok(t.elapsed()),
                    Err(e) => {
                        s.fail("clone+drop".into(), e.to_string());
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                            .await;
                    }
                }
            }
            s
        }));
    }
    let mut pairs = Series::default();
    for w in workers {
        pairs.absorb(w.await?);
    }
    Ok(Ceiling {
        sessions,
        pairs,
        wall: started.elapsed(),
    })
}
