//! Crash soak: `previewdb serve` killed with SIGKILL at random points of creates, deletes,
//! template builds and pool refills, and started again, over a hundred times. Afterwards no
//! record is stuck and nothing on the target carries previewdb's prefix unless a record or a
//! pool accounts for it.

use crate::support::serve::{Replica, ServeOptions};
use crate::support::*;
use previewdb::backend::postgres::names::{self, Kind};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Its own cluster: replicas are killed at random points, and afterwards every record of the
/// control store and everything with the prefix on the target must be accounted for.
static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

async fn cluster() -> Arc<Cluster> {
    cluster_in(&CLUSTER).await
}

const KILLS: usize = 110;

fn blueprint(dir: &std::path::Path) -> String {
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("001_tables.sql"),
        "CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL);\n\
         CREATE TABLE orders (id serial PRIMARY KEY, account int REFERENCES accounts, total numeric);\n",
    )
    .unwrap();
    let seeds = dir.join("seeds");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(
        seeds.join("01_accounts.sql"),
        "INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 2000) g;\n",
    )
    .unwrap();
    format!(
        "[blueprints.soak]\nmigrations = {:?}\nmigrations_format = \"plain\"\nseeds = {:?}\npool_size = 3\n",
        migrations.display().to_string(),
        seeds.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_points_leaves_nothing_unaccounted() {
    let cluster = cluster().await;
    let dir = temp_dir();
    let tables = blueprint(dir.path());
    let opts = ServeOptions {
        top: "upkeep_interval = \"1s\"".into(),
        tables: tables.clone(),
        ..Default::default()
    };
    let mut replica = Replica::start(cluster.clone(), &opts).await;
    let started = Instant::now();
    // A new sequence each run; PREVIEWDB_SOAK_SEED replays one.
    let seed = std::env::var("PREVIEWDB_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("soak seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    while kills < KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "soak took too long"
        );
        let mut ops = vec![];
        for _ in 0..6 {
            let key = format!("soak/{}", rng.gen_range(0..24));
            let body = match rng.gen_range(0..4) {
                0 => json!({ "key": key, "blueprint": "soak" }),
                1 => json!({ "key": key, "blueprint": "soak", "isolation": "schema" }),
                2 => json!({ "key": key, "blueprint": "" }),
                _ => json!({ "key": key, "blueprint": "", "isolation": "schema" }),
            };
            let delete = rng.gen_bool(0.4);
            let (base, http) = (replica.base.clone(), replica.http.clone());
            ops.push(tokio::spawn(async move {
                let req = if delete {
                    http.delete(format!("{base}{}", env_path(&key)))
                } else {
                    http.post(format!("{base}/v1/environments")).json(&body)
                };
                let _ = req.bearer_auth(ADMIN_TOKEN).send().await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        replica.kill();
        kills += 1;
        for op in ops {
            let _ = op.await;
        }
        replica.restart().await;
    }
    println!("{kills} kills in {:?}", started.elapsed());
    replica.kill();

    // A replica that collects leftovers quickly; every record settles, nothing stays unaccounted.
    let final_opts = ServeOptions {
        top: "upkeep_interval = \"1s\"\norphan_grace = \"2s\"".into(),
        tables,
        ..Default::default()
    };
    let replica = Replica::start(cluster.clone(), &final_opts).await;
    let store = connect(&cluster.postgres.admin_url("previewdb"))
        .await
        .unwrap();
    let target = connect(&cluster.postgres.admin_url("postgres"))
        .await
        .unwrap();
    let settle = Instant::now();
    let mut first = true;
    let problems = loop {
        let problems = check(&store, &target).await;
        if first {
            // What the kills left for reconciliation and garbage collection to settle.
            println!(
                "after the kills: {} things to settle: {problems:?}",
                problems.len()
            );
            first = false;
        }
        if problems.is_empty() {
            break problems;
        }
        if settle.elapsed() > Duration::from_secs(120) {
            break problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        problems.is_empty(),
        "after {:?}: {problems:#?}\n{}",
        settle.elapsed(),
        replica.log_tail()
    );
    println!("settled in {:?}", settle.elapsed());

    // And what lives can still be deleted, leaving only templates, pools and shared databases.
    let live: Vec<String> = store
        .query("SELECT key FROM environments WHERE state = 'ready'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for key in live {
        let (status, body) = replica.delete(&env_path(&key)).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{key}: {body}");
    }
    let left: Vec<String> = target
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'pdb_env_') \
             UNION ALL SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'pdb_env_')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What is wrong now: stuck records, and objects with the prefix nothing accounts for.
async fn check(store: &tokio_postgres::Client, target: &tokio_postgres::Client) -> Vec<String> {
    let mut problems = vec![];
    for row in store
        .query(
            "SELECT key, state, teardown_pending FROM environments \
             WHERE state IN ('provisioning', 'deleting') \
                OR (state IN ('failed', 'deleted') AND teardown_pending)",
            &[],
        )
        .await
        .unwrap()
    {
        let (key, state, pending): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        let what = if state == "deleted" && pending {
            "deleted, data not dropped".to_owned()
        } else {
            state
        };
        problems.push(format!("record of {key} stuck in {what}"));
    }
    let accounted: HashSet<String> = store
        .query(
            "SELECT resources->>'database', resources->>'role' FROM environments \
             WHERE state IN ('provisioning', 'ready', 'deleting') OR teardown_pending",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .flat_map(|r| [r.get::<_, Option<String>>(0), r.get(1)])
        .flatten()
        .collect();
    let databases: HashSet<String> = target
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'pdb_')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let roles: HashSet<String> = target
        .query(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'pdb_')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in databases.iter().chain(roles.iter()) {
        let fine = match names::kind(name) {
            Some(Kind::Template { .. }) => !roles.contains(name),
            // The shared database of schema isolation, and the role its members connect as.
            Some(Kind::Shared) => databases.contains(name),
            // A ready pool entry is a database and its role, both.
            Some(Kind::Pool { .. }) => databases.contains(name) && roles.contains(name),
            Some(Kind::Build { .. }) | Some(Kind::Fill { .. }) => false,
            Some(Kind::Other) | None => accounted.contains(name),
        };
        if !fine {
            problems.push(format!("{name} is not accounted for"));
        }
    }
    problems
}
