//! The audit trail and webhooks, black-box: `previewdb serve` processes on a cluster of this
//! module's own, a webhook receiver in the test, and the control store read directly. Events
//! come in order with their actors and request ids, page by `next`, stay within a token's keys
//! and go after their retention; deliveries are signed, retried with the same id, survive a
//! SIGKILL, and an `expiring` notice is sent once across replicas.

use crate::support::serve::{Replica, ServeOptions};
use crate::support::{cluster_in, connect, env_path, Cluster, ADMIN_TOKEN};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use hmac::{Hmac, Mac};
use previewdb::domain::token_digest;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

const SECRET: &str = "webhook-test-secret";
const SCOPED_TOKEN: &str = "audit-scoped-token";

fn org() -> String {
    format!("aud{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A replica whose upkeep runs every second, with retries 1 s apart at first, and `extra`
/// tables (webhooks, tokens) and top-level lines. Its `expiring_notice` is 1 s unless `top`
/// says otherwise: the replicas of this module share a control store, and any of them may
/// notice an expiry (with its own webhooks) unless its notice is shorter.
async fn replica(top: &str, tables: &str) -> Replica {
    let cluster = cluster_in(&CLUSTER).await;
    let notice = match top.contains("expiring_notice") {
        true => "",
        false => "expiring_notice = \"1s\"\n",
    };
    let opts = ServeOptions {
        top: format!("upkeep_interval = \"1s\"\nwebhook_retry_base = \"1s\"\n{notice}{top}"),
        tables: tables.to_owned(),
        env: vec![("AUDIT_HOOK_SECRET", SECRET.to_owned())],
        ..Default::default()
    };
    Replica::start(cluster, &opts).await
}

fn webhook(name: &str, url: &str, events: &[&str]) -> String {
    format!(
        "[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_env = \"AUDIT_HOOK_SECRET\"\nevents = {}\n",
        serde_json::to_string(events).unwrap()
    )
}

/// A request as `token`, with `request_id` as its `x-request-id` when given.
async fn call(
    r: &Replica,
    method: Method,
    path: &str,
    token: &str,
    request_id: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = r
        .http
        .request(method, format!("{}{}", r.base, path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(120));
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("the replica answers");
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn events_path(key: &str) -> String {
    format!("{}/events", env_path(key))
}

/// `(event, actor, request_id)` of every item.
fn summary(items: &Value) -> Vec<(String, String, Option<String>)> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["request_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Polls `check` every 100 ms for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < give_up, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A session on the control store.
async fn control() -> tokio_postgres::Client {
    let cluster = cluster_in(&CLUSTER).await;
    connect(&cluster.postgres.admin_url("previewdb"))
        .await
        .unwrap()
}

/// How many events of `key` the control store holds (of kind `event`, or all).
async fn count_events(db: &tokio_postgres::Client, key: &str, event: Option<&str>) -> i64 {
    db.query_one(
        "SELECT count(*) FROM events WHERE key = $1 AND ($2::text IS NULL OR event = $2)",
        &[&key, &event],
    )
    .await
    .unwrap()
    .get(0)
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_owned()
    }
}

/// A webhook receiver on 127.0.0.1 that answers 500 to its first `failures` requests, 200
/// after, and keeps every request.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            failures,
        )
    }

    fn start_on(listener: tokio::net::TcpListener, failures: usize) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let store = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                let seen = seen.clone();
                async move {
                    store.lock().unwrap().push(Received { headers, body });
                    match seen.fetch_add(1, Ordering::SeqCst) < failures {
                        true => AxStatus::INTERNAL_SERVER_ERROR,
                        false => AxStatus::OK,
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, got, task }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// What it got about `key`.
    fn about(&self, key: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["environment"]["key"] == key)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What in `body` does not match the OpenAPI document's `WebhookDelivery`.
fn delivery_schema_errors(body: &Value) -> Vec<String> {
    const URI: &str = "urn:previewdb:openapi";
    let doc: Value = serde_json::from_str(include_str!("../../src/http/openapi.json")).unwrap();
    let registry = jsonschema::Registry::new()
        .draft(jsonschema::Draft::Draft202012)
        .add(URI, doc)
        .unwrap()
        .prepare()
        .unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_registry(&registry)
        .build(&json!({ "$ref": format!("{URI}#/components/schemas/WebhookDelivery") }))
        .unwrap();
    validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

fn signed_correctly(r: &Received) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    r.header("x-previewdb-signature") == want
}

#[tokio::test]
async fn a_sequence_of_changes_is_told_in_order_with_actors_and_request_ids() {
    let r = replica("", "").await;
    let key = format!("{}/web#1", org());
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);
    // Longer than any `expiring` notice (1 h), so that none comes in between.
    let create = json!({ "key": key, "ttl": "3h" });
    let steps: [(Method, String, Option<Value>, &str); 5] = [
        (
            Method::POST,
            "/v1/environments".into(),
            Some(create.clone()),
            "rq-create",
        ),
        (
            Method::POST,
            "/v1/environments".into(),
            Some(create),
            "rq-again",
        ),
        (
            Method::POST,
            format!("{}/extend", env_path(&key)),
            Some(json!({ "ttl": "4h" })),
            "rq-extend",
        ),
        (
            Method::POST,
            format!("{}/credentials", env_path(&key)),
            None,
            "rq-rotate",
        ),
        (Method::DELETE, env_path(&key), None, "rq-delete"),
    ];
    for (method, path, body, id) in steps {
        let (status, answer) = call(&r, method, &path, ADMIN_TOKEN, Some(id), body).await;
        assert!(status.is_success(), "{id}: {status} {answer}");
    }
    let want: Vec<_> = [
        ("created", "rq-create"),
        ("handed_out", "rq-again"),
        ("extended", "rq-extend"),
        ("rotated", "rq-rotate"),
        ("deleted", "rq-delete"),
    ]
    .iter()
    .map(|(e, id)| (e.to_string(), "admin".to_string(), Some(id.to_string())))
    .collect();
    let (status, all) = call(&r, Method::GET, &events_path(&key), ADMIN_TOKEN, None, None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(summary(&all["items"]), want);
    let items = all["items"].as_array().unwrap();
    assert_eq!(items[2]["detail"]["ttl"], "4h", "{}", items[2]);
    assert!(items[2]["detail"]["expires_at"].is_string());
    assert!(items
        .iter()
        .all(|e| e["outcome"] == "ok" && e["key"] == key.as_str()));

    // Pages of two by `next`, and a `next` after the last page too.
    let mut paged = vec![];
    let mut since: Option<String> = None;
    for round in 0..4 {
        let path = match &since {
            Some(s) => format!("{}?limit=2&since={s}", events_path(&key)),
            None => format!("{}?limit=2", events_path(&key)),
        };
        let (status, page) = call(&r, Method::GET, &path, ADMIN_TOKEN, None, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let n = page["items"].as_array().unwrap().len();
        assert_eq!(n, [2, 2, 1, 0][round], "round {round}: {page}");
        assert_eq!(page["more"], round < 2, "round {round}: {page}");
        paged.extend(summary(&page["items"]));
        since = Some(
            page["next"]
                .as_str()
                .expect("next is always given")
                .to_owned(),
        );
    }
    assert_eq!(paged, want);

    // All events since a time, as the whole trail: this key's among them, in the same order.
    let path = format!(
        "/v1/events?limit=1000&since={}",
        started.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let (status, page) = call(&r, Method::GET, &path, ADMIN_TOKEN, None, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mine: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == key.as_str())
        .cloned()
        .collect();
    assert_eq!(summary(&Value::Array(mine)), want);

    // A create that fails is told as `failed`, an error with the server's message.
    let bad = format!("{key}-bad");
    let body = json!({ "key": bad, "migrations": [{ "name": "V1__bad.sql", "sql": "SELEC 1;" }] });
    let (status, problem) = call(
        &r,
        Method::POST,
        "/v1/environments",
        ADMIN_TOKEN,
        Some("rq-bad"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (_, page) = call(&r, Method::GET, &events_path(&bad), ADMIN_TOKEN, None, None).await;
    assert_eq!(
        summary(&page["items"]),
        [("failed".into(), "admin".into(), Some("rq-bad".into()))]
    );
    assert_eq!(page["items"][0]["outcome"], "error");
    assert!(
        page["items"][0]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("SELEC"),
        "{page}"
    );

    for (query, names) in [
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let (status, problem) = call(
            &r,
            Method::GET,
            &format!("/v1/events?{query}"),
            ADMIN_TOKEN,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(names),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn the_sweeper_is_the_actor_of_a_sweep() {
    let r = replica("", "").await;
    let key = format!("{}/web#1", org());
    let (status, env) = r
        .post("/v1/environments", json!({ "key": key, "ttl": "2s" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    until(Duration::from_secs(20), "swept", || async {
        let (_, page) = r.get(&events_path(&key)).await;
        summary(&page["items"]).iter().any(|(e, _, _)| e == "swept")
    })
    .await;
    let (_, page) = r.get(&events_path(&key)).await;
    let swept: Vec<_> = summary(&page["items"])
        .into_iter()
        .filter(|(e, _, _)| e == "swept")
        .collect();
    assert_eq!(swept, [("swept".into(), "sweeper".into(), None)]);
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_on_the_third_try_signed_and_with_one_delivery_id() {
    let receiver = Receiver::start(2).await;
    let r = replica("", &webhook("retry3", &receiver.url, &["created"])).await;
    let key = format!("{}/web#1", org());
    let (status, env) = r.post("/v1/environments", json!({ "key": key })).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    until(Duration::from_secs(20), "three attempts", || async {
        receiver.about(&key).len() >= 3
    })
    .await;
    // No fourth attempt once one succeeded.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.about(&key);
    assert_eq!(got.len(), 3, "{got:?}");
    let ids: Vec<String> = got
        .iter()
        .map(|g| g.header("x-previewdb-delivery"))
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert!(uuid::Uuid::parse_str(&ids[0]).is_ok());
    for g in &got {
        assert!(signed_correctly(g), "bad signature: {:?}", g.headers);
        assert_eq!(g.header("x-previewdb-event"), "created");
        let body = g.json();
        let errors = delivery_schema_errors(&body);
        assert!(errors.is_empty(), "{errors:?}\n{body:#}");
        assert_eq!(body["event"], "created");
        assert_eq!(body["actor"], "admin");
        assert_eq!(body["outcome"], "ok");
        assert_eq!(body["environment"]["id"], env["id"]);
        assert_eq!(body["environment"]["target"], "local");
    }
    // The outbox says so too.
    let db = control().await;
    let row = db
        .query_one(
            "SELECT d.attempts, d.delivered_at IS NOT NULL FROM deliveries d JOIN events e \
             ON e.id = d.event_id WHERE e.key = $1 AND d.webhook = 'retry3'",
            &[&key],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, bool>(1)), (3, true));
    let (_, metrics) = r.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(
            "previewdb_webhook_deliveries_total{webhook=\"retry3\",outcome=\"failed\"} 2"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("previewdb_webhook_backlog"), "{metrics}");
}

#[tokio::test]
async fn a_delivery_outlives_a_sigkill_of_the_service() {
    // The receiver's port is taken now and served only after the kill.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/hook");
    let mut r = replica("", &webhook("afterkill", &url, &["created"])).await;
    let key = format!("{}/web#1", org());
    let (status, env) = r.post("/v1/environments", json!({ "key": key })).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let db = control().await;
    // The receiver is down: the first attempt fails, and the service is killed after it.
    until(Duration::from_secs(10), "a failed attempt", || async {
        db.query_one(
            "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE e.key = $1 AND d.attempts >= 1 AND d.last_error IS NOT NULL",
            &[&key],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    r.kill();
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE e.key = $1 AND d.delivered_at IS NULL",
            &[&key],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "the delivery waits in the outbox");
    let receiver = Receiver::start_on(tokio::net::TcpListener::bind(addr).await.unwrap(), 0);
    r.restart().await;
    // Within a claim's lease (30 s), should the kill have come in the middle of an attempt.
    until(
        Duration::from_secs(45),
        "delivered after the restart",
        || async { !receiver.about(&key).is_empty() },
    )
    .await;
    let got = receiver.about(&key);
    assert!(signed_correctly(&got[0]));
    assert_eq!(got[0].json()["event"], "created");
}

#[tokio::test]
async fn an_expiring_notice_is_sent_once_across_two_replicas_and_again_after_an_extend() {
    let receiver = Receiver::start(0).await;
    let hook = webhook("expiring2", &receiver.url, &["expiring"]);
    let notice = "expiring_notice = \"1h\"";
    let (a, b) = tokio::join!(replica(notice, &hook), replica(notice, &hook));
    let key = format!("{}/web#1", org());
    let (status, env) = a
        .post("/v1/environments", json!({ "key": key, "ttl": "30m" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let db = control().await;
    until(Duration::from_secs(10), "a notice", || async {
        receiver.about(&key).len() == 1
    })
    .await;
    // Both replicas' upkeep ran again meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_events(&db, &key, Some("expiring")).await, 1);
    assert_eq!(receiver.about(&key).len(), 1);
    let got = receiver.about(&key)[0].json();
    assert_eq!(
        (got["event"].as_str(), got["actor"].as_str()),
        (Some("expiring"), Some("sweeper"))
    );
    assert_eq!(
        got["detail"]["expires_at"]
            .as_str()
            .map(|s| s[..19].to_owned()),
        env["expires_at"].as_str().map(|s| s[..19].to_owned()),
        "{got}"
    );
    // An extend within the notice arms it again: one more notice, for the new expiry.
    let (status, _) = b
        .post(
            &format!("{}/extend", env_path(&key)),
            json!({ "ttl": "40m" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    until(Duration::from_secs(10), "a second notice", || async {
        receiver.about(&key).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_events(&db, &key, Some("expiring")).await, 2);
    let got: Vec<_> = receiver
        .about(&key)
        .iter()
        .map(|r| {
            (
                r.header("x-previewdb-delivery"),
                r.json()["id"].clone(),
                r.json()["event"].clone(),
            )
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_keys_events() {
    let org = org();
    let tokens = format!(
        "[[tokens]]\nname = \"web-ci\"\nsha256 = \"{}\"\nscopes = [\"environments:read\", \"environments:write\"]\nkeys = [\"{org}/web#*\"]\n",
        hex::encode(token_digest(SCOPED_TOKEN))
    );
    let r = replica("", &tokens).await;
    let (web, api) = (format!("{org}/web#1"), format!("{org}/api#1"));
    let (status, _) = call(
        &r,
        Method::POST,
        "/v1/environments",
        SCOPED_TOKEN,
        None,
        Some(json!({ "key": web })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = r.post("/v1/environments", json!({ "key": api })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, page) = call(
        &r,
        Method::GET,
        "/v1/events?limit=1000",
        SCOPED_TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [web.as_str()], "{page}");
    assert_eq!(page["items"][0]["actor"], "web-ci");
    let (status, problem) = call(
        &r,
        Method::GET,
        &events_path(&api),
        SCOPED_TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{problem}"
    );
    let (status, _) = call(
        &r,
        Method::GET,
        &events_path(&web),
        SCOPED_TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The admin sees both.
    let (_, page) = r.get("/v1/events?limit=1000").await;
    let both = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == web.as_str() || e["key"] == api.as_str())
        .count();
    assert_eq!(both, 2);
}

#[tokio::test]
async fn events_of_deleted_environments_go_after_the_retention() {
    let r = replica("audit_retention = \"1h\"", "").await;
    let org = org();
    let (gone, kept) = (format!("{org}/web#1"), format!("{org}/web#2"));
    for key in [&gone, &kept] {
        let (status, _) = r.post("/v1/environments", json!({ "key": key })).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, tomb) = r.delete(&env_path(&gone)).await;
    assert_eq!(status, StatusCode::OK, "{tomb}");
    let db = control().await;
    assert_eq!(count_events(&db, &gone, None).await, 2);
    // Deleted within the retention: kept over a few upkeep rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_events(&db, &gone, None).await, 2);
    db.execute(
        "UPDATE environments SET deleted_at = now() - interval '2 hours' WHERE key = $1",
        &[&gone],
    )
    .await
    .unwrap();
    until(Duration::from_secs(10), "pruned", || async {
        count_events(&db, &gone, None).await == 0
    })
    .await;
    assert_eq!(
        count_events(&db, &kept, None).await,
        1,
        "a live environment's events stay"
    );
}

#[tokio::test]
async fn the_reconciler_is_the_actor_of_rolling_back_an_interrupted_create() {
    let mut r = replica("", "").await;
    let key = format!("{}/web#1", org());
    // A create whose migration sleeps, SIGKILLed while it runs.
    let (http, url) = (r.http.clone(), format!("{}/v1/environments", r.base));
    let body = json!({ "key": key, "migrations": [{ "name": "V1__sleep.sql", "sql": "SELECT pg_sleep(3600);" }] });
    let create = tokio::spawn(async move {
        let _ = http
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await;
    });
    let db = control().await;
    until(Duration::from_secs(20), "provisioning", || async {
        db.query_opt(
            "SELECT 1 FROM environments WHERE key = $1 AND state = 'provisioning'",
            &[&key],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.kill();
    create.abort();
    r.restart().await;
    // Once the dead replica's lease on the key has run out (15 s).
    until(Duration::from_secs(45), "reconciled", || async {
        count_events(&db, &key, Some("reconciled")).await == 1
    })
    .await;
    let (_, page) = r.get(&events_path(&key)).await;
    let events = summary(&page["items"]);
    assert_eq!(
        events,
        [("reconciled".into(), "reconciler".into(), None)],
        "{page}"
    );
    assert_eq!(page["items"][0]["detail"]["was"], "provisioning");
}
