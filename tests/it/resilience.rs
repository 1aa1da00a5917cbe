//! Issue 7, shown against real `previewdb serve` processes on a real PostgreSQL: caller SQL
//! cannot leave the environment's role; bursts through two replicas all succeed without pool
//! timeouts; deadlines cancel and roll back; a DELETE stops a running create, also from another
//! replica and after a replica was killed; extend wins over the sweeper; size quotas lock.

use crate::support::serve::{Replica, ServeOptions};
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Its own cluster: replicas are killed mid-work, bursts hold hundreds of environments on
/// `local` (past the shared cluster's quota), and what is left behind is counted by prefix while
/// the replicas of these tests sweep and reconcile the store.
static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

async fn cluster() -> Arc<Cluster> {
    cluster_in(&CLUSTER).await
}

async fn admin(cluster: &Cluster, db: &str) -> tokio_postgres::Client {
    connect(&cluster.postgres.admin_url(db)).await.unwrap()
}

async fn exists(cluster: &Cluster, role: &str) -> (bool, bool) {
    let a = admin(cluster, "postgres").await;
    let row = a
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), \
                    EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&role],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn user(env: &Value) -> String {
    env["connection"]["user"].as_str().unwrap().to_owned()
}

fn migration(name: &str, sql: &str) -> Value {
    json!({ "name": name, "sql": sql })
}

/// Every way back to the admin that a session of an admin login with a role switch offered:
/// none may work in a session that logged in as the environment's role.
#[tokio::test(flavor = "multi_thread")]
async fn caller_sql_runs_as_the_environment_role_and_cannot_become_anyone_else() {
    let cluster = cluster().await;
    let replica = Replica::start(cluster.clone(), &ServeOptions::default()).await;
    let record = "CREATE TABLE IF NOT EXISTS who (step text, s text, c text); \
                  INSERT INTO who VALUES ('{step}', session_user, current_user);";
    for isolation in ["database", "schema"] {
        let key = format!("escape/{isolation}");
        let allowed = [
            ("none", "SET ROLE NONE;"),
            ("reset", "RESET ROLE;"),
            ("reset_auth", "RESET SESSION AUTHORIZATION;"),
            ("default_auth", "SET SESSION AUTHORIZATION DEFAULT;"),
        ];
        let migrations: Vec<Value> = allowed
            .iter()
            .enumerate()
            .map(|(i, (step, sql))| {
                migration(
                    &format!("{:02}_{step}.sql", i + 1),
                    &format!("{sql} {}", record.replace("{step}", step)),
                )
            })
            .collect();
        let (status, env) = replica
            .post(
                "/v1/environments",
                json!({ "key": key, "isolation": isolation, "blueprint": "", "migrations": migrations }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let role = user(&env);
        let client = connect(&uri(&env)).await.unwrap();
        let rows = client
            .query("SELECT step, s, c FROM who ORDER BY step", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), allowed.len());
        for row in rows {
            let (step, s, c): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                (s.as_str(), c.as_str()),
                (role.as_str(), role.as_str()),
                "after {step}"
            );
        }

        // What an admin session could do, refused to the role, on create and on /migrate.
        let refused = [
            ("SET SESSION AUTHORIZATION previewdb_admin;", "42501"),
            ("SET ROLE previewdb_admin;", "42501"),
            ("SET ROLE NONE; COPY (SELECT 1) TO PROGRAM 'id';", "42501"),
            ("RESET ROLE; ALTER SYSTEM SET work_mem = '1MB';", "42501"),
            ("SET ROLE NONE; SELECT rolpassword FROM pg_authid;", "42501"),
            (
                &format!("RESET ROLE; ALTER ROLE {} SUPERUSER;", role),
                "42501",
            ),
            ("SET ROLE NONE; CREATE ROLE sneaky;", "42501"),
            // Refused, or unknown where no template was built yet.
            ("SET ROLE previewdb_builder;", "42501|22023"),
        ];
        for (i, (sql, code)) in refused.iter().enumerate() {
            let name = format!("{:02}_escape.sql", 50 + i);
            let (status, problem) = replica
                .post(
                    &format!("{}/migrate", env_path(&key)),
                    json!({ "migrations": [migration(&name, sql)] }),
                )
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sql}: {problem}");
            let detail = problem["detail"].as_str().unwrap();
            let code_named = code.split('|').any(|c| detail.contains(c));
            assert!(detail.contains(&name) && code_named, "{sql}: {detail}");
            let (status, problem) = replica
                .post(
                    "/v1/environments",
                    json!({ "key": format!("{key}/create{i}"), "isolation": isolation, "blueprint": "",
                            "migrations": [migration(&name, sql)] }),
                )
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sql}: {problem}");
        }
        let a = admin(&cluster, "postgres").await;
        let sup: bool = a
            .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get(0);
        assert!(!sup);
        let left: i64 = a
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname = 'sneaky' OR rolname LIKE $1",
                &[&format!("pdb_env_escape_{isolation}_create%")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "failed creates leave no role");
    }

    // Schema isolation: a neighbour's table stays out of reach of a migration too.
    let (_, a_env) = replica
        .post(
            "/v1/environments",
            json!({ "key": "escape/neighbour-a", "isolation": "schema", "blueprint": "",
                    "migrations": [migration("01_t.sql", "CREATE TABLE secret (v text); INSERT INTO secret VALUES ('a');")] }),
        )
        .await;
    let a_schema = a_env["connection"]["schema"].as_str().unwrap().to_owned();
    let (status, problem) = replica
        .post(
            "/v1/environments",
            json!({ "key": "escape/neighbour-b", "isolation": "schema", "blueprint": "",
                    "migrations": [migration("01_peek.sql", &format!("SET ROLE NONE; CREATE TABLE stolen AS SELECT * FROM \"{a_schema}\".secret;"))] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("42501"),
        "{problem}"
    );
}

/// 500 creates of distinct keys and 100 of one key, through two replicas at once, with the
/// default queue and pool sizes: every answer is 201 or 200, one environment per key, and
/// health, readiness and reads answer all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_through_two_replicas_all_succeed_and_reads_stay_responsive() {
    let cluster = cluster().await;
    let opts = ServeOptions::default();
    let (a, b) = tokio::join!(
        Replica::start(cluster.clone(), &opts),
        Replica::start(cluster.clone(), &opts)
    );
    let replicas = std::sync::Arc::new([a, b]);
    let (status, probe_env) = replicas[0]
        .post(
            "/v1/environments",
            json!({ "key": "burst/probe", "blueprint": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{probe_env}");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (replicas, done) = (replicas.clone(), done.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut took = vec![];
            let mut i = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = &replicas[i % 2];
                for path in ["/healthz", "/readyz", &env_path("burst/probe")] {
                    let t = Instant::now();
                    let (status, body) = r.get(path).await;
                    assert_eq!(status, StatusCode::OK, "{path}: {body}");
                    worst = worst.max(t.elapsed());
                    took.push(t.elapsed());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            took.sort();
            (
                took.len(),
                took[took.len() / 2],
                took[took.len() * 99 / 100],
                worst,
            )
        })
    };

    let started = Instant::now();
    let mut calls = vec![];
    for i in 0..500 {
        let replicas = replicas.clone();
        calls.push(tokio::spawn(async move {
            let (s, env) = replicas[i % 2]
                .post(
                    "/v1/environments",
                    json!({ "key": format!("burst/{i}"), "blueprint": "" }),
                )
                .await;
            (format!("burst/{i}"), s, env)
        }));
    }
    for i in 0..100 {
        let replicas = replicas.clone();
        calls.push(tokio::spawn(async move {
            let (s, env) = replicas[i % 2]
                .post(
                    "/v1/environments",
                    json!({ "key": "burst/one", "blueprint": "" }),
                )
                .await;
            ("burst/one".to_owned(), s, env)
        }));
    }
    let mut created = 0;
    let mut one = std::collections::HashSet::new();
    for call in calls {
        let (key, status, env) = call.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{key}: {status} {env}"
        );
        created += usize::from(status == StatusCode::CREATED);
        if key == "burst/one" {
            one.insert(env["id"].as_str().unwrap().to_owned());
        }
    }
    let burst = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, p50, p99, worst) = reader.await.unwrap();
    println!(
        "600 creates through two replicas in {burst:?}; {reads} reads meanwhile: p50 {p50:?}, p99 {p99:?}, worst {worst:?}"
    );
    assert_eq!(created, 501, "every distinct key once, the shared key once");
    assert_eq!(one.len(), 1, "one environment for the shared key");
    // Not a speed goal (that is the benchmark's): no read waited behind the burst's work.
    assert!(worst < Duration::from_secs(5), "a read waited {worst:?}");

    let a = admin(&cluster, "previewdb").await;
    let live: i64 = a
        .query_one(
            "SELECT count(*) FROM environments WHERE key LIKE 'burst/%' AND state = 'ready'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 502);

    // Deletes in a burst too.
    let mut calls = vec![];
    for i in 0..500 {
        let replicas = replicas.clone();
        calls.push(tokio::spawn(async move {
            replicas[i % 2]
                .delete(&env_path(&format!("burst/{i}")))
                .await
        }));
    }
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pg = admin(&cluster, "postgres").await;
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_env_burst_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "only the probe and the shared key remain");
}

/// A migration that sleeps meets the create's deadline: 504 `deadline_exceeded` naming the
/// file, on time, and nothing left — no role, no database, no session still sleeping. The
/// same when the migration turns its own statement timeout off.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_migration_meets_its_deadline_and_leaves_nothing() {
    let cluster = cluster().await;
    let replica = Replica::start(cluster.clone(), &ServeOptions::default()).await;
    for (key, sql) in [
        ("deadline/plain", "SELECT pg_sleep(3600);"),
        (
            "deadline/sneaky",
            "SET statement_timeout = 0; SELECT pg_sleep(3600);",
        ),
    ] {
        for isolation in ["database", "schema"] {
            let key = format!("{key}/{isolation}");
            let started = Instant::now();
            let (status, problem) = replica
                .post(
                    "/v1/environments",
                    json!({ "key": key, "blueprint": "", "isolation": isolation, "timeout": "3s",
                            "migrations": [migration("V1__sleep.sql", sql)] }),
                )
                .await;
            let took = started.elapsed();
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{key}: {problem}");
            assert_eq!(problem["code"], "deadline_exceeded", "{problem}");
            assert!(
                took < Duration::from_secs(6),
                "{key}: answered after {took:?}"
            );
            if key.starts_with("deadline/plain") {
                let detail = problem["detail"].as_str().unwrap();
                assert!(
                    detail.contains("V1__sleep.sql") && detail.contains("pg_sleep"),
                    "{detail}"
                );
            }
            let (_, env) = replica.get(&env_path(&key)).await;
            assert_eq!(env["state"], "failed", "{env}");
        }
    }
    let pg = admin(&cluster, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = pg
            .query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()), \
                        (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pdb_env_deadline_%'), \
                        (SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_env_deadline_%')",
                &[],
            )
            .await
            .unwrap();
        let left: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if left == (0, 0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind (sessions, roles, databases): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A DELETE stops a create that is still running: on the same replica, on another one, and
/// after the replica running it was killed (its lease expires).
#[tokio::test(flavor = "multi_thread")]
async fn delete_stops_a_running_create_on_any_replica() {
    let cluster = cluster().await;
    let opts = ServeOptions::default();
    let (a, mut b) = tokio::join!(
        Replica::start(cluster.clone(), &opts),
        Replica::start(cluster.clone(), &opts)
    );
    let a = std::sync::Arc::new(a);
    let sleeping = |key: &str| {
        json!({ "key": key, "blueprint": "", "timeout": "120s",
                "migrations": [migration("V1__sleep.sql", "SELECT pg_sleep(3600);")] })
    };
    for (key, deleter) in [("cancel/same", &*a), ("cancel/other", &b)] {
        let create = {
            let (a, body) = (a.clone(), sleeping(key));
            tokio::spawn(async move { a.post("/v1/environments", body).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        let (status, env) = deleter.delete(&env_path(key)).await;
        assert_eq!(status, StatusCode::OK, "{key}: {env}");
        assert_eq!(env["state"], "deleted", "{env}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{key}: {:?}",
            started.elapsed()
        );
        let (status, problem) = create.await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["code"], "cancelled", "{problem}");
    }

    // The replica running the create dies: its key is free again within the lease's lifetime.
    let create = {
        let body = sleeping("cancel/killed");
        let base = b.base.clone();
        let http = b.http.clone();
        tokio::spawn(async move {
            http.post(format!("{base}/v1/environments"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.kill();
    assert!(
        create.await.unwrap().is_err(),
        "the killed replica never answered"
    );
    let started = Instant::now();
    let (status, env) = a.delete(&env_path("cancel/killed")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    println!("delete after a SIGKILL took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30));
    let pg = admin(&cluster, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = pg
            .query_one(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pdb_env_cancel_%') \
                      + (SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_env_cancel_%') \
                      + (SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} things left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Environments about to expire, extended while the sweeper runs (its own loop every second
/// and explicit sweeps): every extend that answered 200 keeps its environment alive.
#[tokio::test(flavor = "multi_thread")]
async fn an_extend_that_answered_wins_over_the_sweeper() {
    let cluster = cluster().await;
    let opts = ServeOptions {
        top: "upkeep_interval = \"1s\"".into(),
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        Replica::start(cluster.clone(), &opts),
        Replica::start(cluster.clone(), &opts)
    );
    let replicas = std::sync::Arc::new([a, b]);
    let n = 30;
    let mut calls = vec![];
    for i in 0..n {
        let r = replicas.clone();
        calls.push(tokio::spawn(async move {
            let (status, env) = r[i % 2]
                .post(
                    "/v1/environments",
                    json!({ "key": format!("race/{i}"), "blueprint": "", "ttl": "4s" }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{env}");
            env["expires_at"]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        }));
    }
    let mut expiries = vec![];
    for call in calls {
        expiries.push(call.await.unwrap());
    }
    // Each extend is sent around its environment's expiry, from 400 ms before to 200 ms
    // after, while both replicas sweep every second and explicit sweeps come in between.
    let mut calls = vec![];
    for (i, expires) in expiries.into_iter().enumerate() {
        let offset = chrono::Duration::milliseconds(20 * i as i64 - 400);
        let at = expires + offset;
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        let r = replicas.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let (status, _) = r[i % 2]
                .post(
                    &format!("{}/extend", env_path(&format!("race/{i}"))),
                    json!({ "ttl": "1h" }),
                )
                .await;
            (i, status)
        }));
        let r = replicas.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let (status, _) = r[(i + 1) % 2].post("/v1/sweep", json!({})).await;
            (usize::MAX, status)
        }));
    }
    let mut extended = vec![];
    for call in calls {
        let (i, status) = call.await.unwrap();
        if i != usize::MAX && status == StatusCode::OK {
            extended.push(i);
        }
    }
    // Let every sweeper run a few more times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "{} of {n} extends answered 200 before their sweep",
        extended.len()
    );
    assert!(!extended.is_empty());
    for i in extended {
        let (_, env) = replicas[0]
            .get(&format!("{}?reveal=true", env_path(&format!("race/{i}"))))
            .await;
        assert_eq!(
            env["state"], "ready",
            "race/{i} was extended, then swept: {env}"
        );
        connect(&uri(&env))
            .await
            .expect("an extended environment still logs in");
    }
}

/// Over its size quota, an environment is locked: logins refused, sessions ended, shown in its
/// answers and in /metrics; it can still be extended, reset (which lets it in again) and deleted.
#[tokio::test(flavor = "multi_thread")]
async fn an_environment_over_its_quota_is_locked_until_reset() {
    let cluster = cluster().await;
    let pg = &cluster.postgres;
    let opts = ServeOptions {
        top: "upkeep_interval = \"1s\"".into(),
        tables: format!(
            "[targets.quota]\nkind = \"postgres\"\nadmin_url = {:?}\npublic_host = \"127.0.0.1\"\n\
             public_port = {}\nmax_environment_bytes = \"20MB\"\n",
            pg.admin_url("postgres"),
            pg.port()
        ),
        ..Default::default()
    };
    let replica = Replica::start(cluster.clone(), &opts).await;
    for isolation in ["database", "schema"] {
        let key = format!("quota/{isolation}");
        let (status, env) = replica
            .post(
                "/v1/environments",
                json!({ "key": key, "target": "quota", "blueprint": "", "isolation": isolation }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let client = connect(&uri(&env)).await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 150000) g",
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let locked = loop {
            let (_, now) = replica.get(&env_path(&key)).await;
            if now["locked"] == true {
                break now;
            }
            assert!(Instant::now() < deadline, "never locked: {now}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(locked["lock_reason"], "over_quota");
        assert!(
            locked["size_bytes"].as_i64().unwrap() > 20_000_000,
            "{locked}"
        );
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "its session was ended"
        );
        let e = connect(&uri(&env)).await.expect_err("login refused");
        assert_eq!(sqlstate(&e), "28000", "{e}");
        let (_, metrics) = replica.get("/metrics").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .contains("previewdb_environments_locked{target=\"quota\"} "),
            "{}",
            metrics
                .as_str()
                .unwrap()
                .lines()
                .filter(|l| l.contains("locked"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let (status, _) = replica
            .post(
                &format!("{}/extend", env_path(&key)),
                json!({ "ttl": "2h" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, problem) = replica
            .post(&format!("{}/credentials", env_path(&key)), json!({}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::CONFLICT, Some("locked"))
        );
        let (status, reset) = replica
            .post(&format!("{}/reset", env_path(&key)), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{reset}");
        assert_eq!(reset["locked"], false, "{reset}");
        let client = connect(&uri(&env))
            .await
            .expect("logs in again after reset");
        client.simple_query("SELECT 1").await.unwrap();
        let (status, _) = replica.delete(&env_path(&key)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(exists(&cluster, &user(&env)).await, (false, false));
    }
}

/// A key of 32 hex digits, or even one in UUID form, is a key: found, and deleted, by it.
#[tokio::test(flavor = "multi_thread")]
async fn keys_that_look_like_ids_are_keys() {
    let cluster = cluster().await;
    let replica = Replica::start(cluster.clone(), &ServeOptions::default()).await;
    for key in [
        "d41d8cd98f00b204e9800998ecf8427e",
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "{1b4e28ba-2fa1-11d2-883f-0016d3cca428}",
    ] {
        let (status, env) = replica
            .post("/v1/environments", json!({ "key": key, "blueprint": "" }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let (status, got) = replica.get(&env_path(key)).await;
        assert_eq!((status, &got["id"]), (StatusCode::OK, &env["id"]), "{got}");
        let (status, by_id) = replica.get(&env_path(env["id"].as_str().unwrap())).await;
        assert_eq!((status, &by_id["key"]), (StatusCode::OK, &json!(key)));
        let (status, gone) = replica.delete(&env_path(key)).await;
        assert_eq!(
            (status, &gone["state"]),
            (StatusCode::OK, &json!("deleted"))
        );
        assert_eq!(exists(&cluster, &user(&env)).await, (false, false));
    }
}

/// Heavy work waits in a bounded queue per target: past `max_queued`, 503 `queue_full` with
/// Retry-After; callers' migrations that hold their places do not hold back clones.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_work_is_queued_and_a_full_queue_says_when_to_come_back() {
    let cluster = cluster().await;
    let pg = &cluster.postgres;
    let opts = ServeOptions {
        tables: format!(
            "[targets.narrow]\nkind = \"postgres\"\nadmin_url = {:?}\npublic_host = \"127.0.0.1\"\n\
             public_port = {}\nmax_concurrent_provisions = 1\nmax_queued = 1\n",
            pg.admin_url("postgres"),
            pg.port()
        ),
        ..Default::default()
    };
    let replica = std::sync::Arc::new(Replica::start(cluster.clone(), &opts).await);
    let sleeping = |key: &str| {
        json!({ "key": key, "target": "narrow", "blueprint": "", "timeout": "30s",
                "migrations": [migration("V1__sleep.sql", "SELECT pg_sleep(3600);")] })
    };
    // One runs, one waits: the migration queue is full.
    let mut held = vec![];
    for key in ["queue/a", "queue/b"] {
        let (r, body) = (replica.clone(), sleeping(key));
        held.push(tokio::spawn(async move {
            r.post("/v1/environments", body).await
        }));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let res = replica
        .http
        .post(format!("{}/v1/environments", replica.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&sleeping("queue/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full", "{problem}");
    let (_, c) = replica.get(&env_path("queue/c")).await;
    assert_eq!(
        c["state"], "failed",
        "a refused create leaves only its record: {c}"
    );

    // A clone does not wait behind them.
    let started = Instant::now();
    let (status, env) = replica
        .post(
            "/v1/environments",
            json!({ "key": "queue/clone", "target": "narrow", "blueprint": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (_, metrics) = replica.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("previewdb_provision_queue_waiting{target=\"narrow\",queue=\"migration\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("queue"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    for key in ["queue/a", "queue/b", "queue/clone"] {
        let (status, body) = replica.delete(&env_path(key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for call in held {
        let (status, problem) = call.await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    }
}

/// Two replicas sweeping at once: each answer lists only what that sweep tore down, so no
/// expired environment is listed twice, and every one is gone.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sweeps_answer_what_each_did() {
    let cluster = cluster().await;
    let opts = ServeOptions::default();
    let (a, b) = tokio::join!(
        Replica::start(cluster.clone(), &opts),
        Replica::start(cluster.clone(), &opts)
    );
    let mut ids = std::collections::HashSet::new();
    for i in 0..20 {
        let (status, env) = a
            .post(
                "/v1/environments",
                json!({ "key": format!("sweeps/{i}"), "blueprint": "", "ttl": "1s" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.insert(env["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ra, rb) = tokio::join!(
        a.post("/v1/sweep", json!({})),
        b.post("/v1/sweep", json!({}))
    );
    let listed = |r: &(StatusCode, Value)| -> Vec<String> {
        assert_eq!(r.0, StatusCode::OK, "{}", r.1);
        assert_eq!(r.1["failed"], json!([]), "{}", r.1);
        r.1["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .filter(|id| ids.contains(id))
            .collect()
    };
    let (da, db) = (listed(&ra), listed(&rb));
    println!(
        "sweeps: {} by one replica, {} by the other",
        da.len(),
        db.len()
    );
    // Replicas of other tests of this module sweep the same store in the background: what
    // they took is listed by neither answer, but nothing may be listed by both.
    let all: std::collections::HashSet<&String> = da.iter().chain(db.iter()).collect();
    assert_eq!(
        all.len(),
        da.len() + db.len(),
        "an environment listed by both sweeps"
    );
    // What a background sweeper took may still be in teardown when both answers are in;
    // it must finish soon all the same.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let (_, env) = a.get(&env_path(id)).await;
            if env["state"] == "deleted" {
                break;
            }
            assert!(
                env["state"] == "deleting" && tokio::time::Instant::now() < give_up,
                "{env}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A tenant may change its own password; previewdb's migrations and resets log in with the
/// one on record all the same, which works again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_changing_its_password_does_not_lock_previewdb_out() {
    let cluster = cluster().await;
    let replica = Replica::start(cluster.clone(), &ServeOptions::default()).await;
    for isolation in ["database", "schema"] {
        let key = format!("password/{isolation}");
        let (status, env) = replica
            .post(
                "/v1/environments",
                json!({ "key": key, "blueprint": "", "isolation": isolation }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let client = connect(&uri(&env)).await.unwrap();
        client
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" PASSWORD 'mine-now'",
                user(&env)
            ))
            .await
            .unwrap();
        let (status, migrated) = replica
            .post(
                &format!("{}/migrate", env_path(&key)),
                json!({ "migrations": [migration("01_t.sql", "CREATE TABLE t (id int);")] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{migrated}");
        assert_eq!(migrated["applied"], 1);
        connect(&uri(&env))
            .await
            .expect("the handed-out password works again");
        let (status, reset) = replica
            .post(&format!("{}/reset", env_path(&key)), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{reset}");
    }
}

/// Issue 8: a DELETE answers as soon as nobody can reach the environment — its password
/// refused, its open sessions ended, its database closed to everyone — and the data follows: at
/// once with `?wait=true`, else a moment later, also when the replica is killed right after
/// answering (the restarted one finishes it).
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_answers_once_the_environment_is_closed_and_the_data_follows() {
    let cluster = cluster().await;
    let opts = ServeOptions {
        top: "upkeep_interval = \"1s\"".into(),
        ..Default::default()
    };
    let mut replica = Replica::start(cluster.clone(), &opts).await;
    let control = admin(&cluster, "previewdb").await;
    let target = admin(&cluster, "postgres").await;
    for (key, query, kill) in [
        ("closed/async", "", false),
        ("closed/wait", "?wait=true", false),
        ("closed/killed", "", true),
    ] {
        let (status, env) = replica
            .post("/v1/environments", json!({ "key": key, "blueprint": "" }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        let session = connect(&uri(&env)).await.unwrap();
        session
            .batch_execute("CREATE TABLE t (n int)")
            .await
            .unwrap();
        // Raw, not `replica.delete`: that one waits for the purge.
        let (status, gone) = replica
            .call(
                reqwest::Method::DELETE,
                &format!("{}{query}", env_path(key)),
                None,
            )
            .await;
        assert_eq!(
            (status, &gone["state"]),
            (StatusCode::OK, &json!("deleted")),
            "{gone}"
        );
        if kill {
            replica.kill();
        }
        // Before the answer: the password is refused, the open session is gone …
        assert!(
            connect(&uri(&env)).await.is_err(),
            "{key}: login still works"
        );
        assert!(
            session.simple_query("SELECT 1").await.is_err(),
            "{key}: a session survived the delete"
        );
        // … and the database, if still there, is closed to every login.
        let open: Option<bool> = target
            .query_opt(
                "SELECT datallowconn FROM pg_database WHERE datname = $1",
                &[&user(&env)],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        assert_ne!(open, Some(true), "{key}: database still open");
        if query.contains("wait") {
            assert_eq!(gone["purged"], true, "{gone}");
            assert_eq!(exists(&cluster, &user(&env)).await, (false, false));
            continue;
        }
        let pending: bool = control
            .query_one(
                "SELECT teardown_pending FROM environments WHERE id = $1::text::uuid",
                &[&gone["id"].as_str().unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        println!("{key}: data still to drop after the answer: {pending}");
        if kill {
            replica.restart().await;
        }
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, now) = replica.get(&env_path(gone["id"].as_str().unwrap())).await;
            if now["purged"] == true {
                break;
            }
            assert!(Instant::now() < give_up, "{key}: never purged: {now}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(exists(&cluster, &user(&env)).await, (false, false), "{key}");
    }
}
