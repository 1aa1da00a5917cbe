//! Many callers at once: sustained create+delete pairs, filling the target with live
//! environments, and tearing them all down again — every call timed, every failure counted.

use super::client::{Answer, Api};
use super::stats::Series;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Level {
    pub pairs: usize,
    pub wall: Duration,
    pub creates: Series,
    pub deletes: Series,
}

impl Level {
    pub(crate) fn rate(&self) -> f64 {
        self.pairs as f64 / self.wall.as_secs_f64()
    }

    pub(crate) fn errors(&self) -> usize {
        self.creates.error_count() + self.deletes.error_count()
    }
}

/// `clients` callers each creating an environment of `blueprint` and deleting it, again and
/// again, starting no new pair after `run`; the rate counts until the last pair finished.
pub(crate) async fn pairs(api: &Api, blueprint: &str, clients: usize, run: Duration) -> Level {
    let started = Instant::now();
    let stop_at = started + run;
    let mut workers = vec![];
    for w in 0..clients {
        let (api, blueprint) = (api.clone(), blueprint.to_owned());
        workers.push(tokio::spawn(async move {
            let (mut creates, mut deletes, mut pairs) = (Series::default(), Series::default(), 0);
            let mut i = 0;
            while Instant::now() < stop_at {
                let key = format!("bench/pairs/c{clients}/w{w}/{i}");
                i += 1;
                let (answer, took) = api.timed(api.create_env(&key, &blueprint)).await;
                let Some(id) = answer.is(201).then(|| answer.id()).flatten() else {
                    creates.fail(answer.label("create"), answer.detail());
                    tokio::time::sleep(answer.pause()).await;
                    continue;
                };
                creates.ok(took);
                let (answer, took) = api.timed(api.delete_env(&id)).await;
                if answer.is(200) {
                    deletes.ok(took);
                    pairs += 1;
                } else {
                    deletes.fail(answer.label("delete"), answer.detail());
                }
            }
            (creates, deletes, pairs)
        }));
    }
    let mut level = Level {
        pairs: 0,
        wall: Duration::ZERO,
        creates: Series::default(),
        deletes: Series::default(),
    };
    for w in workers {
        let (c, d, p) = w.await.expect("a bench worker panicked");
        level.creates.absorb(c);
        level.deletes.absorb(d);
        level.pairs += p;
    }
    level.wall = started.elapsed();
    level
}

/// Tries of one request in a fill or a teardown: each failure is counted, and the request (an
/// idempotent create or delete) sent again, so that a level still gets its count.
pub(crate) const ATTEMPTS: usize = 3;

/// Runs `requests` (indexed `0..n`) with at most `concurrency` in flight, each up to
/// [`ATTEMPTS`] times. Returns the ids of the answers with `expect` status, the series and the
/// wall time.
pub(crate) async fn fan_out(
    api: &Api,
    n: usize,
    concurrency: usize,
    operation: &'static str,
    expect: u16,
    request: impl Fn(&Api, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> (Vec<String>, Series, Duration) {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let mut workers = vec![];
    for _ in 0..concurrency.min(n.max(1)) {
        let (api, next, request) = (api.clone(), next.clone(), request.clone());
        workers.push(tokio::spawn(async move {
            let (mut ids, mut s) = (vec![], Series::default());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                for _ in 0..ATTEMPTS {
                    let (answer, took): (Answer, Duration) = api.timed(request(&api, i)).await;
                    if answer.is(expect) {
                        s.ok(took);
                        ids.extend(answer.id());
                        break;
                    }
                    s.fail(answer.label(operation), answer.detail());
                    tokio::time::sleep(answer.pause()).await;
                }
            }
            (ids, s)
        }));
    }
    let (mut ids, mut series) = (vec![], Series::default());
    for w in workers {
        let (i, s) = w.await.expect("a bench worker panicked");
        ids.extend(i);
        series.absorb(s);
    }
    (ids, series, started.elapsed())
}

/// `n` environments of the empty blueprint with `isolation`, created `concurrency` at a time.
pub(crate) async fn fill(
    api: &Api,
    prefix: &str,
    n: usize,
    isolation: &'static str,
    concurrency: usize,
) -> (Vec<String>, Series, Duration) {
    let prefix = prefix.to_owned();
    fan_out(api, n, concurrency, "create", 201, move |api, i| {
        api.post(
            "/v1/environments",
            serde_json::json!({ "key": format!("{prefix}/{i}"), "blueprint": "", "isolation": isolation }),
        )
    })
    .await
}

pub(crate) async fn delete_all(
    api: &Api,
    ids: Vec<String>,
    concurrency: usize,
) -> (Series, Duration) {
    let n = ids.len();
    let ids = Arc::new(ids);
    let (_, s, wall) = fan_out(api, n, concurrency, "delete", 200, move |api, i| {
        api.delete_env(&ids[i])
    })
    .await;
    (s, wall)
}

/// `GET /v1/environments` (the first page, as a dashboard asks for it), `rounds` times.
pub(crate) async fn list(api: &Api, rounds: usize) -> (Series, usize) {
    let mut s = Series::default();
    let mut items = 0;
    for _ in 0..rounds {
        let (answer, took) = api.timed(api.get("/v1/environments")).await;
        if answer.is(200) {
            s.ok(took);
            items = answer.body()["items"].as_array().map_or(0, Vec::len);
        } else {
            s.fail(answer.label("list"), answer.detail());
        }
    }
    (s, items)
}
