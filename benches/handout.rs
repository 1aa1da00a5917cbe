//! Hand-out speed of the example blueprint: warm (from the pool), cold (cloned on demand) and
//! the baseline of building the same schema, migrations and seeds from scratch — all measured
//! in this run on a private PostgreSQL. Prints figures and ratios; asserts nothing.
//!
//! `cargo bench --bench handout` (ROUNDS=n to change the sample size).

use previewdb::dev::{self, DevOptions};
use previewdb::startup::Application;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    std::env::set_var(dev::DEV_TOKEN_ENV, TOKEN);
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let setup = dev::setup(&DevOptions {
        listen: Some("127.0.0.1:0".into()),
        data_dir: dir.path().join("data"),
        config: None,
    })
    .await?;
    let mut config = setup.config.clone();
    // The same files under two names: a pool big enough for every warm round, and no pool.
    let app_table = config
        .blueprints
        .get("app")
        .expect("example blueprint")
        .clone();
    for (name, pool) in [("warm", rounds as i64 + 1), ("cold", 0)] {
        let mut t = app_table.clone();
        t.as_table_mut()
            .unwrap()
            .insert("pool_size".into(), toml::Value::Integer(pool));
        config.blueprints.insert(name.into(), t);
    }
    config.blueprints.remove("app");
    config.default_blueprint = None;
    let app = Application::build(&config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let envs = app.environments();
    tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::new();

    let t = Instant::now();
    envs.prepare_blueprint("warm").await?;
    let first_prepare = t.elapsed();
    envs.prepare_blueprint("cold").await?;

    let create = |key: String, blueprint: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let t = Instant::now();
            let res = http
                .post(format!("{base}/v1/environments"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "key": key, "blueprint": blueprint }))
                .send()
                .await
                .expect("request");
            assert_eq!(
                res.status(),
                201,
                "{}",
                res.text().await.unwrap_or_default()
            );
            t.elapsed()
        }
    };
    let mut warm = vec![];
    let mut cold = vec![];
    for i in 0..rounds {
        warm.push(create(format!("bench/warm/{i}"), "warm").await);
        cold.push(create(format!("bench/cold/{i}"), "cold").await);
    }

    // Baseline: what a caller without templates pays — loading schema, migrations and seeds.
    let bp = previewdb::blueprint::Blueprint::load("app", &app_table)?;
    let mut scratch = vec![];
    for i in 0..rounds.min(5) {
        let started = Instant::now();
        build_from_scratch(&setup.postgres, &bp, i).await?;
        scratch.push(started.elapsed());
    }

    report("warm hand-out (pool)", &mut warm);
    report("cold hand-out (clone)", &mut cold);
    report("baseline: build from files", &mut scratch);
    let (w, c, s) = (median(&warm), median(&cold), median(&scratch));
    println!(
        "first prepare (template + pool of {}): {:.0} ms",
        rounds + 1,
        ms(first_prepare)
    );
    println!(
        "ratio cold/warm: {:.1}x   baseline/warm: {:.0}x   baseline/cold: {:.1}x",
        ratio(c, w),
        ratio(s, w),
        ratio(s, c)
    );
    setup.postgres.stop();
    Ok(())
}

/// Loads the blueprint's files into a fresh database, as a caller without templates would.
async fn build_from_scratch(
    pg: &previewdb::embedded::EmbeddedPostgres,
    bp: &previewdb::blueprint::Blueprint,
    i: usize,
) -> anyhow::Result<()> {
    use previewdb::sqlexec::{self, migrations, Mode, Policy, Script};
    let name = format!("bench_scratch_{i}");
    previewdb::dev::create_database_if_missing(&pg.admin_url("postgres"), &name).await?;
    let server = previewdb::pgconn::PgConnector::parse(&pg.admin_url(&name))?;
    let session = migrations::Session::new(server);
    let c = session.connect().await?;
    for ext in &bp.extensions {
        c.batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", ext.quoted()))
            .await?;
    }
    let policy = Policy {
        tolerate_missing_roles: true,
    };
    if let Some(schema) = &bp.schema {
        sqlexec::run(
            &session.connect().await?,
            &Script::parse(&schema.name, &schema.text)?,
            Mode::Autocommit,
            &policy,
        )
        .await?;
    }
    migrations::apply(bp.format, &session, &bp.migrations).await?;
    for seed in &bp.seeds {
        let c = session.connect().await?;
        if seed.name.ends_with(".csv") {
            let table = previewdb::blueprint::seed_table(&seed.name).map_err(anyhow::Error::msg)?;
            sqlexec::copy_csv(&c, &seed.name, &table, seed.text.as_bytes()).await?;
        } else {
            sqlexec::run(
                &c,
                &Script::parse(&seed.name, &seed.text)?,
                Mode::Transaction,
                &policy,
            )
            .await?;
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn report(what: &str, v: &mut [Duration]) {
    v.sort();
    let p = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    println!(
        "{what:<28} n={:<3} min {:>7.1} ms  median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        v.len(),
        p(0.0),
        p(0.5),
        p(0.9),
        p(1.0)
    );
}
