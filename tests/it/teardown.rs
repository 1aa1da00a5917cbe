//! Teardown against hostile tenants: for each thing a tenant (or a neighbour) can do in its own
//! database, schema or role to stop its teardown, the tenant does it over the handed-out
//! connection, and `DELETE` still answers 200 within seconds and leaves nothing behind, while the
//! neighbour keeps working. Every wait is bounded, so a regression fails instead of hanging.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

/// Its own cluster: hostile tenants leave what nobody can clean up (an environment stuck in
/// `deleting` behind a prepared transaction in a closed database), which every other app on the
/// store would retry at each reconciliation.
static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

async fn cluster() -> Arc<Cluster> {
    cluster_in(&CLUSTER).await
}

/// Well beyond a teardown's own lock timeout, well below "hangs".
const DELETE_WITHIN: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

#[derive(Clone, Copy, PartialEq)]
enum Iso {
    Database,
    Schema,
}

async fn make(app: &TestApp, key: &str, iso: Iso) -> Value {
    let body = match iso {
        Iso::Database => json!({ "key": key, "blueprint": "" }),
        Iso::Schema => json!({ "key": key, "isolation": "schema", "blueprint": "" }),
    };
    within("create", app.create(body)).await
}

fn user(env: &Value) -> String {
    env["connection"]["user"].as_str().unwrap().to_owned()
}

fn database(env: &Value) -> String {
    env["connection"]["database"].as_str().unwrap().to_owned()
}

async fn login(env: &Value) -> Client {
    within("tenant login", connect(&uri(env)))
        .await
        .expect("tenant logs in")
}

async fn run(client: &Client, sql: &str) {
    within(sql, client.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Prepared transaction ids are cluster-wide: the victim's role name keeps them apart.
async fn prepare(client: &Client, env: &Value, gid: &str) {
    run(
        client,
        &format!("PREPARE TRANSACTION '{}_{gid}'", user(env)),
    )
    .await;
}

async fn count(
    admin: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    within(sql, admin.query_one(sql, params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A victim and its neighbour, both live.
struct Pair {
    app: TestApp,
    victim: Value,
    neighbour: Value,
    iso: Iso,
}

impl Pair {
    async fn new(name: &str, iso: Iso) -> Pair {
        let app = TestApp::spawn_on(cluster().await).await;
        let tag = if iso == Iso::Schema { "s" } else { "d" };
        let victim = make(&app, &format!("teardown/{name}/{tag}/victim"), iso).await;
        let neighbour = make(&app, &format!("teardown/{name}/{tag}/neighbour"), iso).await;
        Pair {
            app,
            victim,
            neighbour,
            iso,
        }
    }

    fn victim_role(&self) -> String {
        user(&self.victim)
    }

    /// `DELETE` of the victim answers 200 in time, and PostgreSQL holds nothing of it.
    async fn delete_victim_and_check(&self) {
        let (role, db) = (user(&self.victim), database(&self.victim));
        let admin = self.app.admin("postgres").await;
        let oid: u32 = within(
            "role oid",
            admin.query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&role]),
        )
        .await
        .expect("victim role exists before teardown")
        .get(0);

        let key = self.victim["key"].as_str().unwrap();
        let (status, body) = tokio::time::timeout(DELETE_WITHIN, self.app.delete(&env_path(key)))
            .await
            .expect("DELETE answers within 30 s");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "deleted", "{body}");

        let oid_param = tokio_postgres::types::Oid::from(oid);
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM pg_roles WHERE rolname = $1",
                &[&role]
            )
            .await,
            0,
            "role left"
        );
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM pg_shdepend WHERE refobjid = $1",
                &[&oid_param]
            )
            .await,
            0,
            "pg_shdepend rows left for the role"
        );
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM pg_auth_members WHERE roleid = $1 OR member = $1",
                &[&oid_param]
            )
            .await,
            0,
            "memberships left"
        );
        assert_eq!(
            count(
                &admin,
                "SELECT count(*) FROM pg_prepared_xacts WHERE owner = $1 OR (database = $2 AND $3)",
                &[&role, &db, &(self.iso == Iso::Database)]
            )
            .await,
            0,
            "prepared transactions left"
        );
        match self.iso {
            Iso::Database => assert_eq!(
                count(
                    &admin,
                    "SELECT count(*) FROM pg_database WHERE datname = $1",
                    &[&db]
                )
                .await,
                0,
                "database left"
            ),
            Iso::Schema => {
                let shared = self.app.admin(&db).await;
                assert_eq!(
                    count(
                        &shared,
                        "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                        &[&role]
                    )
                    .await,
                    0,
                    "schema left"
                );
            }
        }
        let e = within("old password", connect(&uri(&self.victim)))
            .await
            .expect_err("the old password is refused");
        assert_eq!(sqlstate(&e), "28P01", "{e}");

        // The neighbour still works, over a fresh login.
        let n = login(&self.neighbour).await;
        let one: i32 = within("neighbour query", n.query_one("SELECT 1", &[]))
            .await
            .expect("neighbour queries")
            .get(0);
        assert_eq!(one, 1);
    }
}

async fn is_template(iso: Iso) {
    let p = Pair::new("template", iso).await;
    let v = login(&p.victim).await;
    // Only a database's owner may; a schema tenant owns none, so this must be refused.
    let sql = format!("ALTER DATABASE {} IS_TEMPLATE true", database(&p.victim));
    match iso {
        Iso::Database => run(&v, &sql).await,
        Iso::Schema => {
            let e = v.batch_execute(&sql).await.expect_err("not the owner");
            assert_eq!(sqlstate(&e), "42501", "{e}");
        }
    }
    p.delete_victim_and_check().await;
}

#[tokio::test]
async fn a_database_marked_template_by_its_tenant_is_dropped() {
    is_template(Iso::Database).await;
}

#[tokio::test]
async fn a_schema_tenant_cannot_mark_the_shared_database_template() {
    is_template(Iso::Schema).await;
}

async fn prepared_transactions(iso: Iso) {
    let p = Pair::new("prepared", iso).await;
    let v = login(&p.victim).await;
    // An innocent neighbour session in the same (shared, for schema) database must survive.
    let n = login(&p.neighbour).await;
    run(&v, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await;
    // One holding a lock on the tenant's table (DROP SCHEMA waited for it forever) …
    run(
        &v,
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; INSERT INTO t VALUES (2)",
    )
    .await;
    prepare(&v, &p.victim, "holds_t").await;
    // … one holding the role's own catalog row (ALTER ROLE … NOLOGIN and DROP ROLE wait) …
    run(
        &v,
        "BEGIN; ALTER ROLE CURRENT_USER PASSWORD 'Sup3rSecretXyz'",
    )
    .await;
    prepare(&v, &p.victim, "holds_role").await;
    if iso == Iso::Database {
        // … and one holding the database's catalog row (ALTER DATABASE waits).
        run(
            &v,
            &format!(
                "BEGIN; ALTER DATABASE {} CONNECTION LIMIT 7",
                database(&p.victim)
            ),
        )
        .await;
        prepare(&v, &p.victim, "holds_db").await;
    }
    p.delete_victim_and_check().await;
    let still: i32 = within("neighbour session", n.query_one("SELECT 2", &[]))
        .await
        .expect("the neighbour's open session survives")
        .get(0);
    assert_eq!(still, 2);
}

#[tokio::test]
async fn prepared_transactions_of_a_database_tenant_are_rolled_back() {
    prepared_transactions(Iso::Database).await;
}

#[tokio::test]
async fn prepared_transactions_of_a_schema_tenant_are_rolled_back() {
    prepared_transactions(Iso::Schema).await;
}

async fn grants_from_a_neighbour(iso: Iso) {
    let p = Pair::new("grants", iso).await;
    let victim = p.victim_role();
    let n = login(&p.neighbour).await;
    run(
        &n,
        &format!(
            "CREATE TABLE a_t (x int); INSERT INTO a_t VALUES (1); \
             GRANT SELECT ON a_t TO {victim}; \
             ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {victim}; \
             ALTER TABLE a_t ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY seen_by_victim ON a_t TO {victim} USING (true);"
        ),
    )
    .await;
    match iso {
        Iso::Database => {
            run(
                &n,
                &format!(
                    "GRANT CONNECT, CREATE ON DATABASE {} TO {victim}",
                    database(&p.neighbour)
                ),
            )
            .await
        }
        Iso::Schema => {
            run(
                &n,
                &format!("GRANT USAGE ON SCHEMA {} TO {victim}", user(&p.neighbour)),
            )
            .await
        }
    }
    p.delete_victim_and_check().await;
    // What the neighbour made for the victim is gone; what it made for itself is not.
    let n = login(&p.neighbour).await;
    let rows: i64 = within(
        "neighbour table",
        n.query_one("SELECT count(*) FROM a_t", &[]),
    )
    .await
    .expect("the neighbour's table survives")
    .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn grants_a_database_neighbour_made_to_the_tenant_are_revoked() {
    grants_from_a_neighbour(Iso::Database).await;
}

#[tokio::test]
async fn grants_a_schema_neighbour_made_to_the_tenant_are_revoked() {
    grants_from_a_neighbour(Iso::Schema).await;
}

/// What the tenant left in the neighbour's database, where the neighbour let it in: objects it
/// owns there and grants it made from there.
#[tokio::test]
async fn objects_a_tenant_made_in_another_database_are_dropped() {
    let p = Pair::new("elsewhere", Iso::Database).await;
    let victim = p.victim_role();
    let n = login(&p.neighbour).await;
    run(
        &n,
        &format!(
            "GRANT CONNECT, CREATE ON DATABASE {} TO {victim}; GRANT CREATE ON SCHEMA public TO {victim}",
            database(&p.neighbour)
        ),
    )
    .await;
    let there = within(
        "victim in the neighbour's database",
        connect(&uri_for_database(&p.victim, &database(&p.neighbour))),
    )
    .await
    .expect("the neighbour let the victim in");
    run(
        &there,
        "CREATE SCHEMA squat; CREATE TABLE squat.t (x int); CREATE TABLE public.left_behind (x int); \
         SELECT lo_create(0); CREATE PUBLICATION victim_pub FOR TABLE public.left_behind;",
    )
    .await;
    run(
        &there,
        &format!(
            "GRANT USAGE ON SCHEMA squat TO {n}; GRANT SELECT ON squat.t TO {n}",
            n = user(&p.neighbour)
        ),
    )
    .await;
    drop(there);
    // The neighbour builds on the victim's table: that must not keep it alive.
    run(&n, "CREATE VIEW on_victims AS SELECT * FROM squat.t").await;
    p.delete_victim_and_check().await;
    let n = login(&p.neighbour).await;
    let left: i64 = within(
        "leftovers",
        n.query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'squat') \
             + (SELECT count(*) FROM pg_class WHERE relname = 'left_behind') \
             + (SELECT count(*) FROM pg_publication WHERE pubname = 'victim_pub')",
            &[],
        ),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(left, 0, "the victim's objects in the neighbour's database");
}

/// Defaults a tenant gives its own database act on every later session in it, ours included:
/// a role to act as, a search path that shadows the catalog, read-only transactions, timeouts
/// of a millisecond, a library that fails every login; and a connection limit of 0, its own
/// role's defaults, and, from another database it was let into, no connections at all — with a
/// prepared transaction left behind that only a session in the database can roll back.
#[tokio::test]
async fn database_defaults_a_tenant_set_do_not_reach_the_teardown() {
    let p = Pair::new("defaults", Iso::Database).await;
    let (victim, db) = (p.victim_role(), database(&p.victim));
    let v = login(&p.victim).await;
    run(
        &v,
        &format!(
            "CREATE SCHEMA evil; \
             CREATE FUNCTION evil.pg_terminate_backend(int, bigint) RETURNS bool \
               LANGUAGE sql AS 'SELECT false'; \
             CREATE VIEW evil.pg_prepared_xacts AS SELECT * FROM pg_catalog.pg_prepared_xacts WHERE false; \
             ALTER DATABASE {db} SET search_path = evil, pg_catalog; \
             ALTER DATABASE {db} SET role = {victim}; \
             ALTER DATABASE {db} SET default_transaction_read_only = on; \
             ALTER DATABASE {db} SET statement_timeout = 1; \
             ALTER DATABASE {db} SET lock_timeout = 1; \
             ALTER DATABASE {db} SET idle_session_timeout = 1; \
             ALTER DATABASE {db} SET idle_in_transaction_session_timeout = 1; \
             ALTER DATABASE {db} CONNECTION LIMIT 0; \
             ALTER ROLE CURRENT_USER SET statement_timeout = 1; \
             ALTER ROLE CURRENT_USER SET lock_timeout = 1;"
        ),
    )
    .await;
    run(&v, "BEGIN; CREATE TABLE t (x int)").await;
    prepare(&v, &p.victim, "needs_a_session_in_db").await;
    run(
        &v,
        &format!("ALTER DATABASE {db} SET local_preload_libraries = 'no_such_library'"),
    )
    .await;
    // The neighbour lets the victim in; from there the victim closes its own database.
    let n = login(&p.neighbour).await;
    run(
        &n,
        &format!(
            "GRANT CONNECT ON DATABASE {} TO {victim}",
            database(&p.neighbour)
        ),
    )
    .await;
    let there = within(
        "victim in the neighbour's database",
        connect(&uri_for_database(&p.victim, &database(&p.neighbour))),
    )
    .await
    .expect("the neighbour let the victim in");
    run(
        &there,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    )
    .await;
    // A membership in itself for the neighbour: PostgreSQL 15.x releases after 2023 refuse it;
    // if this one allows it, the teardown must not trip on it either.
    let _ = there
        .batch_execute(&format!("GRANT {victim} TO {}", user(&p.neighbour)))
        .await;
    p.delete_victim_and_check().await;
}

/// Sessions in an open transaction holding locks on the tenant's objects: its own (both
/// isolations) and, for schema isolation, a neighbour's that the tenant let at its table.
async fn locks_in_open_transactions(iso: Iso) {
    let p = Pair::new("locks", iso).await;
    let victim = p.victim_role();
    let v = login(&p.victim).await;
    run(
        &v,
        &format!(
            "CREATE TABLE t (x int); GRANT USAGE ON SCHEMA {} TO {n}; GRANT SELECT ON t TO {n};",
            if iso == Iso::Schema {
                victim.clone()
            } else {
                "public".into()
            },
            n = user(&p.neighbour)
        ),
    )
    .await;
    let holder = login(&p.victim).await;
    run(&holder, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await;
    let innocent = login(&p.neighbour).await;
    let nosy = login(&p.neighbour).await;
    if iso == Iso::Schema {
        run(&holder, "COMMIT").await;
        run(
            &nosy,
            &format!("BEGIN; LOCK TABLE {victim}.t IN ACCESS SHARE MODE"),
        )
        .await;
        run(&holder, "BEGIN; SELECT * FROM t").await;
        // A neighbour let create in the schema, mid-transaction, prepared: it holds a lock on
        // the schema itself.
        run(
            &v,
            &format!("GRANT CREATE ON SCHEMA {victim} TO {}", user(&p.neighbour)),
        )
        .await;
        let squatter = login(&p.neighbour).await;
        run(
            &squatter,
            &format!("BEGIN; CREATE TABLE {victim}.squat (x int)"),
        )
        .await;
        prepare(&squatter, &p.victim, "neighbour_in_schema").await;
    }
    p.delete_victim_and_check().await;
    assert!(holder.is_closed() || holder.simple_query("SELECT 1").await.is_err());
    let still: i32 = within("neighbour session", innocent.query_one("SELECT 3", &[]))
        .await
        .expect("the neighbour's other session survives")
        .get(0);
    assert_eq!(still, 3);
}

#[tokio::test]
async fn locks_held_in_a_database_tenant_open_transaction_do_not_block() {
    locks_in_open_transactions(Iso::Database).await;
}

#[tokio::test]
async fn locks_held_on_a_schema_tenant_objects_do_not_block() {
    locks_in_open_transactions(Iso::Schema).await;
}

/// Large objects and the role's own defaults in the shared database.
#[tokio::test]
async fn large_objects_and_role_defaults_of_a_schema_tenant_are_dropped() {
    let p = Pair::new("lo", Iso::Schema).await;
    let v = login(&p.victim).await;
    run(
        &v,
        &format!(
            "SELECT lo_create(0); SELECT lo_from_bytea(0, 'secret'); \
             ALTER ROLE CURRENT_USER SET statement_timeout = 1; \
             ALTER ROLE CURRENT_USER IN DATABASE {} SET lock_timeout = 1;",
            database(&p.victim)
        ),
    )
    .await;
    p.delete_victim_and_check().await;
}

/// Reset (database isolation) goes through the same drop: a tenant that marked its database a
/// template and left a prepared transaction in it still gets a fresh one.
#[tokio::test]
async fn reset_survives_what_blocks_a_teardown() {
    let p = Pair::new("reset", Iso::Database).await;
    let db = database(&p.victim);
    let v = login(&p.victim).await;
    run(&v, "CREATE TABLE t (x int)").await;
    run(&v, "BEGIN; INSERT INTO t VALUES (1)").await;
    prepare(&v, &p.victim, "before_reset").await;
    run(&v, &format!("ALTER DATABASE {db} IS_TEMPLATE true")).await;
    let key = p.victim["key"].as_str().unwrap();
    let (status, body) = tokio::time::timeout(
        DELETE_WITHIN,
        p.app.post(&format!("{}/reset", env_path(key)), json!({})),
    )
    .await
    .expect("reset answers within 30 s");
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = login(&p.victim).await;
    let gone: i64 = within(
        "fresh database",
        v.query_one("SELECT count(*) FROM pg_class WHERE relname = 't'", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(gone, 0, "reset kept the old table");
    p.delete_victim_and_check().await;
}

/// Reset (schema isolation) waited for ever on a prepared transaction's lock on the schema.
#[tokio::test]
async fn schema_reset_survives_a_prepared_transaction() {
    let p = Pair::new("reset", Iso::Schema).await;
    let v = login(&p.victim).await;
    let n = login(&p.neighbour).await;
    run(&v, "CREATE TABLE t (x int)").await;
    run(&v, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await;
    prepare(&v, &p.victim, "before_schema_reset").await;
    let key = p.victim["key"].as_str().unwrap();
    let (status, body) = tokio::time::timeout(
        DELETE_WITHIN,
        p.app.post(&format!("{}/reset", env_path(key)), json!({})),
    )
    .await
    .expect("reset answers within 30 s");
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = login(&p.victim).await;
    let gone: i64 = within(
        "fresh schema",
        v.query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 't' AND relnamespace = current_schema()::regnamespace",
            &[],
        ),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(gone, 0, "reset kept the old table");
    let still: i32 = within("neighbour session", n.query_one("SELECT 4", &[]))
        .await
        .expect("the neighbour's open session survives")
        .get(0);
    assert_eq!(still, 4);
    p.delete_victim_and_check().await;
}

/// The one blocker left: with a second database to stand in (a neighbour let it in), a tenant
/// can close its own database to connections and keep a prepared transaction in it that holds
/// the database's catalog row. PostgreSQL then lets nobody into the database to roll it back,
/// nor change the row to reopen it, nor drop it. The teardown must say so within its timeouts,
/// having locked the role out, and leave the record `deleting` for a retry.
#[tokio::test]
async fn an_unrecoverable_database_fails_clearly_in_time_with_the_role_locked_out() {
    let p = Pair::new("stuck", Iso::Database).await;
    let (victim, db) = (p.victim_role(), database(&p.victim));
    let v = login(&p.victim).await;
    let n = login(&p.neighbour).await;
    run(
        &n,
        &format!(
            "GRANT CONNECT ON DATABASE {} TO {victim}",
            database(&p.neighbour)
        ),
    )
    .await;
    let there = within(
        "victim in the neighbour's database",
        connect(&uri_for_database(&p.victim, &database(&p.neighbour))),
    )
    .await
    .expect("the neighbour let the victim in");
    run(
        &there,
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    )
    .await;
    run(
        &v,
        &format!("BEGIN; ALTER DATABASE {db} CONNECTION LIMIT 7"),
    )
    .await;
    prepare(&v, &p.victim, "holds_closed_db").await;

    let key = p.victim["key"].as_str().unwrap();
    let (status, body) = tokio::time::timeout(DELETE_WITHIN, p.app.delete(&env_path(key)))
        .await
        .expect("DELETE answers within 30 s");
    assert!(status.is_server_error(), "{status} {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("prepared transaction") && detail.contains(&db),
        "{body}"
    );
    let (_, record) = p.app.get(&env_path(key)).await;
    assert_eq!(record["state"], "deleting", "{record}");
    let admin = p.app.admin("postgres").await;
    let can_login: bool = within(
        "rolcanlogin",
        admin.query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&victim],
        ),
    )
    .await
    .unwrap()
    .get(0);
    assert!(!can_login, "the role may still log in");
    assert!(
        within(
            "victim login",
            connect(&uri_for_database(&p.victim, &database(&p.neighbour)))
        )
        .await
        .is_err(),
        "the victim still logs in"
    );
}
