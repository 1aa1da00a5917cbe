//! Throughput and latency under concurrency, on a private PostgreSQL, over HTTP against the
//! service run in this process — and, measured in the same run, the ceiling it is held to: the
//! server's own rate of `CREATE DATABASE … TEMPLATE` + `DROP DATABASE` pairs.
//!
//! 1. baseline: raw clone+drop pairs of the example blueprint's template at 1, 2, 4, 8 sessions;
//! 2. sustained create+delete pairs of the example blueprint at 1, 8, 32, 128 clients, the pool
//!    refilling as it goes, each for `PREVIEWDB_BENCH_SECS` (default 15) seconds;
//! 3. a burst of `PREVIEWDB_BENCH_BURST` (default 500) creates of distinct keys with the empty
//!    blueprint, then as many deletes, while a reader times `/healthz`, `/readyz` and a `GET`.
//!
//! Prints one Markdown table per section and writes them, and the same figures as JSON, to
//! `<target dir>/bench/concurrency.{md,json}`. Asserts nothing: the figures are the result.
//!
//! `cargo bench --bench concurrency` (`PREVIEWDB_BENCH_PROVISIONS=n` overrides the target's
//! `max_concurrent_provisions`, to see what the queue's bound costs).

use previewdb::dev::{self, DevOptions};
use previewdb::startup::Application;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
const BASELINE_SESSIONS: [usize; 4] = [1, 2, 4, 8];
const CLIENTS: [usize; 4] = [1, 8, 32, 128];
/// Enough room for the burst and whatever a sustained level leaves in flight.
const MAX_ENVIRONMENTS: u32 = 2000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env_number("PREVIEWDB_BENCH_SECS", 15);
    let burst = env_number("PREVIEWDB_BENCH_BURST", 500) as usize;
    let run = Duration::from_secs(secs);
    let bench_started = Instant::now();

    std::env::set_var(dev::DEV_TOKEN_ENV, TOKEN);
    let dir = tempfile::tempdir()?;
    // When run as root, the server runs as another user that must reach its data directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let setup = dev::setup(&DevOptions {
        listen: Some("127.0.0.1:0".into()),
        data_dir: dir.path().join("data"),
        config: None,
    })
    .await?;
    let mut config = setup.config.clone();
    // The dev default (200) would refuse most of the burst; every other setting is the default.
    let mut settings = json!({});
    for target in config.targets.values_mut() {
        if let previewdb::configuration::TargetConfig::Postgres(pg) = target {
            pg.max_environments = MAX_ENVIRONMENTS;
            // To see what the queue's bound costs; the default is the configuration's.
            if let Ok(n) = std::env::var("PREVIEWDB_BENCH_PROVISIONS") {
                pg.max_concurrent_provisions = n.parse().expect("PREVIEWDB_BENCH_PROVISIONS");
            }
            settings = json!({
                "max_environments": pg.max_environments,
                "max_concurrent_provisions": pg.max_concurrent_provisions,
                "max_queued": pg.max_queued,
                "provision_timeout_s": config.provision_timeout.as_secs(),
            });
        }
    }
    let blueprint = config
        .default_blueprint
        .clone()
        .expect("the example blueprint of seeds/ is the default");
    let pool_size = config.blueprints[&blueprint]
        .get("pool_size")
        .and_then(toml::Value::as_integer)
        .unwrap_or(0);
    settings["blueprint"] = json!(blueprint);
    settings["pool_size"] = json!(pool_size);
    settings["seconds_per_level"] = json!(secs);
    settings["burst"] = json!(burst);
    settings["cores"] = json!(std::thread::available_parallelism().map_or(0, |n| n.get()));

    let app = Application::build(&config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let envs = app.environments();
    tokio::spawn(app.run_until(std::future::pending()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(config.provision_timeout + Duration::from_secs(30))
        .build()?;

    let t = Instant::now();
    envs.prepare_blueprint(&blueprint).await?;
    settings["first_prepare_ms"] = json!(ms(t.elapsed()).round());
    let admin_url = setup.postgres.admin_url("postgres");
    let template = template_name(&admin_url, &blueprint).await?;
    settings["template"] = json!(template);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# previewdb concurrency benchmark\n\n{}\n",
        settings_line(&settings)
    );

    // 1. Baseline.
    eprintln!("baseline: raw clone+drop pairs from {template}");
    let mut baseline = vec![];
    for sessions in BASELINE_SESSIONS {
        baseline.push(raw_pairs(&admin_url, &template, sessions, run).await?);
    }
    let best = baseline.iter().map(|b| b.rate).fold(0.0, f64::max);
    let table = baseline_table(&baseline, best);
    println!("{table}");
    md.push_str(&table);

    // 2. Sustained create+delete pairs.
    let mut sustained = vec![];
    for clients in CLIENTS {
        // Each level starts from a full pool; during it the pool refills as it can.
        envs.prepare_blueprint(&blueprint).await?;
        eprintln!("sustained: {clients} clients for {secs} s");
        let sampler = Sampler::start(envs.clone(), admin_url.clone());
        let mut level = pairs(&http, &base, &blueprint, clients, run).await;
        level.profile = sampler.stop().await;
        sustained.push(level);
    }
    let table = sustained_table(&sustained, best);
    println!("{table}");
    md.push_str(&table);
    let table = profile_table(&sustained);
    println!("{table}");
    md.push_str(&table);

    // 3. Burst.
    eprintln!("burst: {burst} creates, then {burst} deletes");
    let burst = burst_run(&http, &base, burst).await?;
    let table = burst_table(&burst);
    println!("{table}");
    md.push_str(&table);

    let total = bench_started.elapsed();
    let _ = writeln!(md, "Whole run: {:.0} s.", total.as_secs_f64());
    println!("Whole run: {:.0} s.", total.as_secs_f64());
    let doc = json!({
        "settings": settings,
        "baseline": baseline.iter().map(Baseline::json).collect::<Vec<_>>(),
        "baseline_best_pairs_per_s": best,
        "sustained": sustained.iter().map(|s| s.json(best)).collect::<Vec<_>>(),
        "burst": burst.json(),
        "total_s": total.as_secs_f64(),
    });
    let out = output_dir();
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("concurrency.md"), &md)?;
    std::fs::write(
        out.join("concurrency.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    eprintln!("written to {}", out.join("concurrency.{md,json}").display());
    setup.postgres.stop();
    Ok(())
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// `$CARGO_TARGET_DIR/bench`, else the package's `target/bench`.
fn output_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench")
}

fn settings_line(s: &Value) -> String {
    let obj = s.as_object().expect("an object");
    obj.iter()
        .map(|(k, v)| format!("`{k}` = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn admin(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    Ok(previewdb::pgconn::PgConnector::parse(url)?
        .connect()
        .await?)
}

/// The one finished template of `blueprint` on the fresh cluster.
async fn template_name(admin_url: &str, blueprint: &str) -> anyhow::Result<String> {
    let rows = admin(admin_url)
        .await?
        .query(
            "SELECT datname FROM pg_database WHERE datistemplate AND starts_with(datname, $1)",
            &[&format!("pdb_tpl_{blueprint}_")],
        )
        .await?;
    anyhow::ensure!(
        rows.len() == 1,
        "expected one template of {blueprint}, found {}",
        rows.len()
    );
    Ok(rows[0].get(0))
}

// ---------------------------------------------------------------------------------------------
// 1. Baseline

struct Baseline {
    sessions: usize,
    pairs: usize,
    wall: Duration,
    rate: f64,
    latency: Vec<Duration>,
}

impl Baseline {
    fn json(&self) -> Value {
        json!({
            "sessions": self.sessions,
            "pairs": self.pairs,
            "wall_s": self.wall.as_secs_f64(),
            "pairs_per_s": self.rate,
            "pair_ms": percentiles_json(&self.latency),
        })
    }
}

/// `sessions` admin sessions cloning the template and dropping the clone, for `run`.
async fn raw_pairs(
    admin_url: &str,
    template: &str,
    sessions: usize,
    run: Duration,
) -> anyhow::Result<Baseline> {
    let started = Instant::now();
    let stop_at = started + run;
    let mut workers = vec![];
    for w in 0..sessions {
        let client = admin(admin_url).await?;
        let template = postgres_protocol::escape::escape_identifier(template);
        workers.push(tokio::spawn(async move {
            let mut took = vec![];
            let mut i = 0;
            while Instant::now() < stop_at {
                let db = format!("\"bench_raw_{sessions}_{w}_{i}\"");
                let t = Instant::now();
                client
                    .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE {template}"))
                    .await?;
                client.batch_execute(&format!("DROP DATABASE {db}")).await?;
                took.push(t.elapsed());
                i += 1;
            }
            Ok::<_, tokio_postgres::Error>(took)
        }));
    }
    let mut latency = vec![];
    for w in workers {
        latency.extend(w.await??);
    }
    let wall = started.elapsed();
    Ok(Baseline {
        sessions,
        pairs: latency.len(),
        wall,
        rate: latency.len() as f64 / wall.as_secs_f64(),
        latency,
    })
}

fn baseline_table(rows: &[Baseline], best: f64) -> String {
    let mut t = String::from(
        "## Baseline: raw `CREATE DATABASE … TEMPLATE` + `DROP DATABASE` pairs\n\n\
         | sessions | pairs | pairs/s | pair p50 ms | pair p95 ms | pair p99 ms |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for b in rows {
        let p = Percentiles::of(&b.latency);
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} |",
            b.sessions, b.pairs, b.rate, p.p50, p.p95, p.p99
        );
    }
    let _ = writeln!(t, "\nBaseline (best rate): **{best:.2} pairs/s**.\n");
    t
}

// ---------------------------------------------------------------------------------------------
// 2. Sustained pairs

#[derive(Default)]
struct Level {
    clients: usize,
    pairs: usize,
    wall: Duration,
    creates: Vec<Duration>,
    deletes: Vec<Duration>,
    /// Non-2xx answers (and transport errors) by `<operation> <status> <code>`.
    errors: BTreeMap<String, usize>,
    /// The first answer's `detail` for each of `errors`.
    details: BTreeMap<String, String>,
    profile: Profile,
}

impl Level {
    fn count_error(&mut self, answer: &Answer, operation: &str) {
        let label = answer.label(operation);
        *self.errors.entry(label.clone()).or_default() += 1;
        self.details.entry(label).or_insert_with(|| answer.detail());
    }

    fn rate(&self) -> f64 {
        self.pairs as f64 / self.wall.as_secs_f64()
    }

    fn json(&self, baseline: f64) -> Value {
        json!({
            "clients": self.clients,
            "pairs": self.pairs,
            "wall_s": self.wall.as_secs_f64(),
            "pairs_per_s": self.rate(),
            "ratio_to_baseline": self.rate() / baseline,
            "create_ms": percentiles_json(&self.creates),
            "delete_ms": percentiles_json(&self.deletes),
            "non_2xx": self.errors,
            "non_2xx_details": self.details,
            "profile": self.profile.json(),
        })
    }
}

/// `clients` callers each creating an environment of `blueprint` and deleting it, again and
/// again, starting no new pair after `run`; the rate counts until the last pair finished.
async fn pairs(
    http: &reqwest::Client,
    base: &str,
    blueprint: &str,
    clients: usize,
    run: Duration,
) -> Level {
    let started = Instant::now();
    let stop_at = started + run;
    let mut workers = vec![];
    for w in 0..clients {
        let (http, base, blueprint) = (http.clone(), base.to_owned(), blueprint.to_owned());
        workers.push(tokio::spawn(async move {
            let mut level = Level::default();
            let mut i = 0;
            while Instant::now() < stop_at {
                let key = format!("bench-c{clients}-w{w}-{i}");
                i += 1;
                let t = Instant::now();
                let answer = call(
                    http.post(format!("{base}/v1/environments"))
                        .json(&json!({ "key": key, "blueprint": blueprint })),
                )
                .await;
                level.creates.push(t.elapsed());
                if answer.status() != Some(201) {
                    level.count_error(&answer, "create");
                    tokio::time::sleep(answer.pause()).await;
                    continue;
                }
                let id = answer.body()["id"].as_str().unwrap_or_default().to_owned();
                let t = Instant::now();
                let answer = call(http.delete(format!("{base}/v1/environments/{id}"))).await;
                level.deletes.push(t.elapsed());
                match answer.status() {
                    Some(200) => level.pairs += 1,
                    _ => level.count_error(&answer, "delete"),
                }
            }
            level
        }));
    }
    let mut level = Level {
        clients,
        ..Default::default()
    };
    for w in workers {
        let l = w.await.expect("a bench worker panicked");
        level.pairs += l.pairs;
        level.creates.extend(l.creates);
        level.deletes.extend(l.deletes);
        for (k, n) in l.errors {
            *level.errors.entry(k).or_default() += n;
        }
        for (k, d) in l.details {
            level.details.entry(k).or_insert(d);
        }
    }
    level.wall = started.elapsed();
    level
}

fn sustained_table(levels: &[Level], baseline: f64) -> String {
    let mut t = String::from(
        "## Sustained create+delete pairs of the example blueprint (pool refilling)\n\n\
         | clients | pairs | pairs/s | ÷ baseline | create p50 / p95 / p99 ms | delete p50 / p95 / p99 ms | non-2xx |\n\
         |---:|---:|---:|---:|---:|---:|---|\n",
    );
    for l in levels {
        let (c, d) = (Percentiles::of(&l.creates), Percentiles::of(&l.deletes));
        let errors = if l.errors.is_empty() {
            "none".to_owned()
        } else {
            l.errors
                .iter()
                .map(|(k, n)| format!("{n} × {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {} |",
            l.clients,
            l.pairs,
            l.rate(),
            l.rate() / baseline,
            c.p50,
            c.p95,
            c.p99,
            d.p50,
            d.p95,
            d.p99,
            errors
        );
    }
    t.push('\n');
    let mut details = BTreeMap::new();
    for l in levels {
        details.extend(l.details.iter().map(|(k, d)| (k.clone(), d.clone())));
    }
    t.push_str(&details_list(&details));
    t
}

/// The first detail of each kind of non-2xx answer, as a Markdown list (empty for none).
fn details_list(details: &BTreeMap<String, String>) -> String {
    let mut t = String::new();
    if !details.is_empty() {
        t.push_str("First detail of each kind of non-2xx answer:\n\n");
        for (label, detail) in details {
            let _ = writeln!(t, "- `{label}`: {}", detail.replace('\n', " "));
        }
        t.push('\n');
    }
    t
}

/// Where a level's time went, sampled every `SAMPLE_EVERY`: the target's queue, and what the
/// server's sessions were doing.
#[derive(Default)]
struct Profile {
    samples: usize,
    queue_running: f64,
    queue_waiting: f64,
    max_waiting: usize,
    /// Mean number of sessions per activity (see `activity`).
    activity: BTreeMap<String, f64>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(200);

impl Profile {
    fn json(&self) -> Value {
        json!({
            "samples": self.samples,
            "queue_running_mean": self.queue_running,
            "queue_waiting_mean": self.queue_waiting,
            "queue_waiting_max": self.max_waiting,
            "sessions_mean": self.activity,
        })
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Profile>,
}

impl Sampler {
    fn start(envs: Arc<previewdb::environments::Environments>, admin_url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut p = Profile::default();
            let Ok(client) = admin(&admin_url).await else {
                return p;
            };
            while !flag.load(Ordering::Relaxed) {
                for t in envs.targets() {
                    // Clones, builds and refills: what the sustained levels wait for.
                    for (_, q) in t.queues.iter().filter(|(kind, _)| *kind == "provision") {
                        p.queue_running += q.running() as f64;
                        p.queue_waiting += q.queued() as f64;
                        p.max_waiting = p.max_waiting.max(q.queued());
                    }
                }
                if let Ok(rows) = client.query(ACTIVITY, &[]).await {
                    for row in rows {
                        *p.activity.entry(row.get(0)).or_default() += row.get::<_, i64>(1) as f64;
                    }
                }
                p.samples += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            let n = p.samples.max(1) as f64;
            p.queue_running /= n;
            p.queue_waiting /= n;
            p.activity.values_mut().for_each(|v| *v /= n);
            p
        });
        Self { stop, task }
    }

    async fn stop(self) -> Profile {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

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

fn profile_table(levels: &[Level]) -> String {
    let mut t = String::from(
        "## Where the sustained levels spent their time (sampled every 200 ms)\n\n\
         Mean over the samples of: places taken in the target's work queue (of \
         `max_concurrent_provisions`), callers waiting for one, and sessions on the server by \
         activity (the top ones; `idle` includes pooled connections nobody uses).\n\n\
         | clients | samples | queue running | queue waiting (max) | sessions by activity (mean) |\n\
         |---:|---:|---:|---:|---|\n",
    );
    for l in levels {
        let p = &l.profile;
        let mut top: Vec<_> = p.activity.iter().filter(|(_, v)| **v >= 0.05).collect();
        top.sort_by(|a, b| b.1.total_cmp(a.1));
        let top = top
            .iter()
            .take(8)
            .map(|(k, v)| format!("{v:.1} {k}"))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.1} ({}) | {} |",
            l.clients,
            p.samples,
            p.queue_running,
            p.queue_waiting,
            p.max_waiting,
            top.replace('|', "\\|")
        );
    }
    t.push('\n');
    t
}

// ---------------------------------------------------------------------------------------------
// 3. Burst

struct Burst {
    n: usize,
    create_wall: Duration,
    delete_wall: Duration,
    creates: BTreeMap<String, usize>,
    deletes: BTreeMap<String, usize>,
    /// The first `detail` of each kind of non-2xx answer.
    details: BTreeMap<String, String>,
    create_latency: Vec<Duration>,
    delete_latency: Vec<Duration>,
    /// Reader latencies by phase and path.
    reads: BTreeMap<(&'static str, &'static str), Vec<Duration>>,
    /// Reader answers other than 200, by phase, path and status.
    read_errors: BTreeMap<String, usize>,
}

impl Burst {
    fn json(&self) -> Value {
        let reads: Vec<Value> = self
            .reads
            .iter()
            .map(|((phase, path), v)| json!({ "phase": phase, "path": path, "ms": percentiles_json(v) }))
            .collect();
        json!({
            "n": self.n,
            "create_wall_s": self.create_wall.as_secs_f64(),
            "delete_wall_s": self.delete_wall.as_secs_f64(),
            "create_answers": self.creates,
            "delete_answers": self.deletes,
            "non_2xx_details": self.details,
            "create_ms": percentiles_json(&self.create_latency),
            "delete_ms": percentiles_json(&self.delete_latency),
            "reads": reads,
            "read_errors": self.read_errors,
        })
    }
}

const PROBE: &str = "bench-probe";
const READ_PATHS: [&str; 3] = ["/healthz", "/readyz", "/v1/environments/bench-probe"];

async fn burst_run(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Burst> {
    let probe = call(
        http.post(format!("{base}/v1/environments"))
            .json(&json!({ "key": PROBE, "blueprint": "" })),
    )
    .await;
    anyhow::ensure!(
        probe.status() == Some(201),
        "probe environment: {}",
        probe.label("create")
    );

    let phase = Arc::new(std::sync::Mutex::new("creates"));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (http, base, phase, done) =
            (http.clone(), base.to_owned(), phase.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads: BTreeMap<(&'static str, &'static str), Vec<Duration>> = BTreeMap::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                for path in READ_PATHS {
                    let now = *phase.lock().unwrap();
                    let t = Instant::now();
                    let answer = call(http.get(format!("{base}{path}"))).await;
                    reads.entry((now, path)).or_default().push(t.elapsed());
                    if answer.status() != Some(200) {
                        *errors
                            .entry(format!("{now} {path} {}", answer.label("read")))
                            .or_default() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (reads, errors)
        })
    };

    let mut details = BTreeMap::new();
    let (creates, create_latency, create_wall, ids) = fan_out(n, "create", &mut details, |i| {
        http.post(format!("{base}/v1/environments"))
            .json(&json!({ "key": format!("bench-burst-{i}"), "blueprint": "" }))
    })
    .await;
    *phase.lock().unwrap() = "deletes";
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    let (deletes, delete_latency, delete_wall, _) =
        fan_out(ids.len(), "delete", &mut details, |i| {
            http.delete(format!("{base}/v1/environments/{}", ids[i]))
        })
        .await;
    done.store(true, Ordering::Relaxed);
    let (reads, read_errors) = reader.await?;
    Ok(Burst {
        n,
        create_wall,
        delete_wall,
        creates,
        deletes,
        details,
        create_latency,
        delete_latency,
        reads,
        read_errors,
    })
}

/// Sends `n` requests at once; answers by status, latencies, wall time, and the id each 2xx
/// answer carried. The first detail of each kind of non-2xx answer goes to `details`.
async fn fan_out(
    n: usize,
    operation: &str,
    details: &mut BTreeMap<String, String>,
    request: impl Fn(usize) -> reqwest::RequestBuilder,
) -> (
    BTreeMap<String, usize>,
    Vec<Duration>,
    Duration,
    Vec<Option<String>>,
) {
    let started = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let req = request(i);
            tokio::spawn(async move {
                let t = Instant::now();
                let answer = call(req).await;
                (answer, t.elapsed())
            })
        })
        .collect();
    let (mut answers, mut latency, mut ids) = (BTreeMap::new(), vec![], vec![]);
    for c in calls {
        let (answer, took) = c.await.expect("a bench call panicked");
        latency.push(took);
        let ok = answer.status().is_some_and(|s| (200..300).contains(&s));
        ids.push(
            ok.then(|| answer.body()["id"].as_str().map(str::to_owned))
                .flatten(),
        );
        *answers.entry(answer.label("")).or_default() += 1;
        if !ok {
            details
                .entry(answer.label(operation))
                .or_insert_with(|| answer.detail());
        }
    }
    (answers, latency, started.elapsed(), ids)
}

fn burst_table(b: &Burst) -> String {
    let answers = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{n} × {}", k.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (c, d) = (
        Percentiles::of(&b.create_latency),
        Percentiles::of(&b.delete_latency),
    );
    let mut t = format!(
        "## Burst: {n} concurrent creates (empty blueprint), then {n} deletes\n\n\
         | phase | wall s | answers | p50 / p99 / max ms |\n|---|---:|---|---:|\n\
         | creates | {:.1} | {} | {:.0} / {:.0} / {:.0} |\n\
         | deletes | {:.1} | {} | {:.0} / {:.0} / {:.0} |\n\n\
         A reader meanwhile (one request at a time, 10 ms apart; goal: p99 under 100 ms):\n\n\
         | phase | path | reads | p50 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|---:|\n",
        b.create_wall.as_secs_f64(),
        answers(&b.creates),
        c.p50,
        c.p99,
        c.max,
        b.delete_wall.as_secs_f64(),
        answers(&b.deletes),
        d.p50,
        d.p99,
        d.max,
        n = b.n,
    );
    for ((phase, path), v) in &b.reads {
        let p = Percentiles::of(v);
        let _ = writeln!(
            t,
            "| {phase} | `{path}` | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            p.p50,
            p.p99,
            p.max
        );
    }
    if b.read_errors.is_empty() {
        t.push_str("\nEvery read answered 200.\n\n");
    } else {
        let _ = writeln!(t, "\nReads not answered 200: {}\n", answers(&b.read_errors));
    }
    t.push_str(&details_list(&b.details));
    t
}

// ---------------------------------------------------------------------------------------------
// HTTP and figures

enum Answer {
    Http {
        status: u16,
        body: Value,
        retry_after: Option<Duration>,
    },
    Transport(String),
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport(_) => None,
        }
    }

    fn body(&self) -> &Value {
        match self {
            Answer::Http { body, .. } => body,
            Answer::Transport(_) => &Value::Null,
        }
    }

    /// `<operation> <status> <code>`, e.g. `create 503 queue_full`.
    fn label(&self, operation: &str) -> String {
        match self {
            Answer::Http { status, body, .. } => match body["code"].as_str() {
                Some(code) => format!("{operation} {status} {code}"),
                None => format!("{operation} {status}"),
            },
            Answer::Transport(e) => format!("{operation} transport error ({e})"),
        }
    }

    /// What the answer says went wrong: its problem's `detail`, or the transport error.
    fn detail(&self) -> String {
        match self {
            Answer::Http { body, .. } => body["detail"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned),
            Answer::Transport(e) => e.clone(),
        }
    }

    /// How long a polite client waits before trying again: the answer's `Retry-After`, capped
    /// so that a level's clients keep the service busy.
    fn pause(&self) -> Duration {
        match self {
            Answer::Http {
                retry_after: Some(d),
                ..
            } => (*d).min(Duration::from_secs(2)),
            _ => Duration::from_millis(200),
        }
    }
}

async fn call(req: reqwest::RequestBuilder) -> Answer {
    match req.bearer_auth(TOKEN).send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = res.json().await.unwrap_or(Value::Null);
            Answer::Http {
                status,
                body,
                retry_after,
            }
        }
        Err(e) => Answer::Transport(e.without_url().to_string()),
    }
}

struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles in milliseconds; zeros for no samples.
    fn of(v: &[Duration]) -> Self {
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
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

fn percentiles_json(v: &[Duration]) -> Value {
    let p = Percentiles::of(v);
    json!({ "n": v.len(), "p50": p.p50, "p95": p.p95, "p99": p.p99, "max": p.max })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
