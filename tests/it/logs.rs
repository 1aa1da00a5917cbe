//! The logs and process metrics of `previewdb serve` as an operator gets them: the real binary,
//! its stderr to a file. JSON lines parse; text to a file has no colour codes; every request has
//! one access line at INFO naming its route template (never the path, which holds the key) and
//! the request id the response carries, which the work spawned for it logs under too; probes'
//! access lines are at DEBUG. `/metrics` has the `process_*` series and `previewdb_build_info`.

use crate::support::serve::{Replica, ServeOptions};
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// POSTs a create of `key`; its status, body and `x-request-id`.
async fn create(replica: &Replica, key: &str) -> (StatusCode, Value, String) {
    let res = replica
        .http
        .post(format!("{}/v1/environments", replica.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "key": key, "ttl": "1h" }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    (status, res.json().await.unwrap(), id)
}

async fn get_ok(replica: &Replica, path: &str) -> String {
    let res = replica
        .http
        .get(format!("{}{path}", replica.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    res.text().await.unwrap()
}

/// The field `name` of the `request` span a JSON line was logged in.
fn request_field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "request")?[name]
        .as_str()
}

#[tokio::test]
async fn json_lines_carry_the_request_id_and_one_access_line_per_request() {
    let cluster = cluster().await;
    let started = SystemTime::now();
    // The variable wins over the file.
    let opts = ServeOptions {
        top: "log_format = \"text\"".into(),
        env: vec![("PREVIEWDB_LOG_FORMAT", "json".into())],
        ..Default::default()
    };
    let replica = Replica::start(cluster, &opts).await;
    let key = "logs-json/Sekr1tKey#7";
    let (status, env, request_id) = create(&replica, key).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    get_ok(&replica, "/readyz").await;
    get_ok(&replica, "/healthz").await;
    let metrics = get_ok(&replica, "/metrics").await;

    let log = replica.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(!log.contains("Sekr1tKey"), "the key is in the log:\n{log}");
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "access")
        .collect();
    let mine: Vec<&&Value> = access
        .iter()
        .filter(|l| request_field(l, "request_id") == Some(request_id.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "one access line for the create:\n{log}");
    let line = mine[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(request_field(line, "method"), Some("POST"), "{line}");
    assert_eq!(
        request_field(line, "route"),
        Some("/v1/environments"),
        "{line}"
    );
    assert_eq!(line["fields"]["status"], 201, "{line}");
    let ms = line["fields"]["duration_ms"].as_f64().expect("duration_ms");
    assert!(ms > 0.0 && ms < 300_000.0, "{line}");
    // "environment ready" is logged in the task `Environments::create` spawns.
    let ready: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "environment ready" && l["fields"]["env"] == env["id"]
        })
        .collect();
    assert_eq!(ready.len(), 1, "{log}");
    assert_eq!(
        request_field(ready[0], "request_id"),
        Some(request_id.as_str()),
        "{}",
        ready[0]
    );
    // Probes (the harness polled /readyz until ready, and so did this test) at DEBUG only.
    for probe in ["/readyz", "/healthz", "/metrics"] {
        assert!(
            !access
                .iter()
                .any(|l| request_field(l, "route") == Some(probe)),
            "{probe} access at INFO:\n{log}"
        );
    }

    // The process series, compared with what /proc says of the process from outside.
    let samples = parse_metrics(&metrics);
    let one = |name: &str| -> f64 {
        let series = metric_series(&samples, name);
        assert_eq!(series.len(), 1, "{name}: {metrics}");
        series[""]
    };
    let pid = replica.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let rss = one("process_resident_memory_bytes");
    assert!(
        rss > 1e6 && rss > rss_kb * 1024.0 / 2.0 && rss < rss_kb * 1024.0 * 2.0,
        "rss {rss}, /proc says {rss_kb} kB"
    );
    let now = SystemTime::now();
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let start = one("process_start_time_seconds");
    // `btime` is whole seconds.
    assert!(
        start >= since(started) - 1.5 && start <= since(now) + 1.5,
        "start {start}, test from {} to {}",
        since(started),
        since(now)
    );
    let cpu = one("process_cpu_seconds_total");
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let alive = now.duration_since(started).unwrap_or(Duration::ZERO);
    assert!(
        cpu > 0.0 && cpu <= alive.as_secs_f64() * cores + 0.1,
        "cpu {cpu} s in {alive:?}"
    );
    let fds = one("process_open_fds");
    let outside = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    // stdio, the listener, the control store's and the target's connections.
    assert!(
        fds >= 5.0 && (fds - outside).abs() <= 10.0,
        "fds {fds}, /proc lists {outside}"
    );
    assert_eq!(
        metric_series(&samples, "previewdb_build_info"),
        [(format!("version={}", env!("CARGO_PKG_VERSION")), 1.0)]
            .into_iter()
            .collect(),
        "{metrics}"
    );
    let (status, _) = replica.delete(&env_path(key)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn text_to_a_file_has_no_escape_codes_and_probes_log_at_debug() {
    let cluster = cluster().await;
    let opts = ServeOptions {
        env: vec![(
            "RUST_LOG",
            "info,tokio_postgres=warn,previewdb::http=debug".into(),
        )],
        ..Default::default()
    };
    let replica = Replica::start(cluster, &opts).await;
    let key = "logs-text/Sekr1tKey#8";
    let (status, env, request_id) = create(&replica, key).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    get_ok(&replica, "/readyz").await;

    let log = replica.log();
    assert!(!log.contains('\x1b'), "ANSI codes in the log:\n{log}");
    assert!(!log.contains("Sekr1tKey"), "the key is in the log:\n{log}");
    let id = format!("request_id={request_id}");
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&id) && l.contains(" access "))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    for part in [
        " INFO ",
        "method=POST",
        "route=/v1/environments ",
        "status=201",
        "duration_ms=",
    ] {
        assert!(access[0].contains(part), "{part:?} not in {}", access[0]);
    }
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("environment ready")
            && l.contains(env["id"].as_str().unwrap())),
        "{log}"
    );
    // The probe's access line exists, at DEBUG.
    let probes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("route=/readyz") && l.contains(" access "))
        .collect();
    assert!(!probes.is_empty(), "{log}");
    assert!(probes.iter().all(|l| l.contains("DEBUG")), "{probes:#?}");
    let (status, _) = replica.delete(&env_path(key)).await;
    assert_eq!(status, StatusCode::OK);
}
