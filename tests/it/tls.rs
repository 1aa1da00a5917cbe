//! TLS to targets, as libpq reads `sslmode`/`sslrootcert`: the test cluster gets a certificate
//! from a CA made here and refuses every TCP connection without TLS, so whatever previewdb
//! manages to do on it — admin work, template builds, sqlx migrations — went through TLS.

use crate::support::*;
use previewdb::pgconn::{describe, PgConnector};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Its own cluster: these tests turn TLS on and refuse every TCP connection without it.
static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

async fn cluster() -> Arc<Cluster> {
    cluster_in(&CLUSTER).await
}

const TLS_ADMIN: &str = "tls_admin";
const TLS_ADMIN_PASSWORD: &str = "tls-admin-pw";

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Turns TLS on in this module's cluster (a certificate for `localhost` and `db.example`, not
/// for `127.0.0.1`), rejects TCP without TLS, and adds a superuser that logs in over TCP.
async fn pki() -> &'static Pki {
    static PKI: OnceCell<Pki> = OnceCell::const_new();
    PKI.get_or_init(|| async {
        let cluster = cluster().await;
        let dir = temp_dir();
        let ca = new_ca("previewdb test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.path().join("other-ca.pem"),
            new_ca("somebody else").pem(),
        )
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "db.example".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();

        // The server reads its key as its own user, and only from a private file.
        let data = cluster.postgres.data_dir();
        let owner = std::fs::metadata(data).unwrap();
        let place = |name: &str, text: String| {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
            path
        };
        let cert_file = place("server.crt", server.pem());
        let key_file = place("server.key", key.serialize_pem());

        let admin = connect(&cluster.postgres.admin_url("postgres"))
            .await
            .unwrap();
        let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("hostnossl all all all reject\n{rules}")).unwrap();
        // One statement per query: ALTER SYSTEM refuses a transaction block.
        for sql in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert_file.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key_file.display()),
            "ALTER SYSTEM SET ssl = on".into(),
            "SELECT pg_reload_conf()".into(),
            format!("CREATE ROLE {TLS_ADMIN} LOGIN SUPERUSER PASSWORD '{TLS_ADMIN_PASSWORD}'"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        // The postmaster rereads its files asynchronously.
        for _ in 0..200 {
            let on: String = connect(&cluster.postgres.admin_url("postgres"))
                .await
                .unwrap()
                .query_one("SHOW ssl", &[])
                .await
                .unwrap()
                .get(0);
            if on == "on" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Pki { dir }
    })
    .await
}

async fn tcp_url(host: &str, params: &str) -> String {
    format!(
        "postgres://{TLS_ADMIN}:{TLS_ADMIN_PASSWORD}@{host}:{}/postgres?{params}",
        cluster().await.postgres.port()
    )
}

/// Whether a connection made with `url` works, and whether the server sees it encrypted.
async fn try_url(url: &str) -> Result<bool, String> {
    let c = PgConnector::parse(url).map_err(|e| format!("{e:#}"))?;
    let client = c.connect().await.map_err(|e| describe(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmodes_mean_what_they_mean_in_libpq() {
    let pki = pki().await;
    let (ca, other) = (pki.ca(), pki.other_ca());
    let root = |p: &Path| format!("sslrootcert={}", p.display());

    // Encrypted but unauthenticated, as libpq's require and prefer.
    for params in ["sslmode=require", "sslmode=prefer", ""] {
        let url = tcp_url("127.0.0.1", params).await;
        assert_eq!(try_url(&url).await, Ok(true), "{params}");
    }
    // The server refuses TCP without TLS: disable cannot get in.
    let refused = try_url(&tcp_url("127.0.0.1", "sslmode=disable").await).await;
    let e = refused.unwrap_err();
    assert!(e.contains("no encryption"), "{e}");

    // verify-ca checks the chain, not the name (the certificate does not name 127.0.0.1).
    let ok = tcp_url("127.0.0.1", &format!("sslmode=verify-ca&{}", root(&ca))).await;
    assert_eq!(try_url(&ok).await, Ok(true));
    // ...and so does require once a root is given.
    let ok = tcp_url("127.0.0.1", &format!("sslmode=require&{}", root(&ca))).await;
    assert_eq!(try_url(&ok).await, Ok(true));
    let stranger = tcp_url("127.0.0.1", &format!("sslmode=verify-ca&{}", root(&other))).await;
    let e = try_url(&stranger).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let e = try_url(&tcp_url("127.0.0.1", "sslmode=verify-ca").await)
        .await
        .unwrap_err();
    assert!(
        e.contains("UnknownIssuer"),
        "the public roots do not vouch for it: {e}"
    );

    // verify-full also checks the name.
    let full = tcp_url("localhost", &format!("sslmode=verify-full&{}", root(&ca))).await;
    assert_eq!(try_url(&full).await, Ok(true));
    let wrong_name = tcp_url("127.0.0.1", &format!("sslmode=verify-full&{}", root(&ca))).await;
    let e = try_url(&wrong_name).await.unwrap_err();
    assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
}

#[tokio::test]
async fn sslrootcert_system_is_the_operating_systems_trust_store() {
    let pki = pki().await;
    // The trust store is read where OpenSSL reads it, `SSL_CERT_FILE` first: here the
    // "operating system" trusts the test CA, which the compiled-in roots do not. Nothing else in
    // this binary asks for the system's roots, so setting it here changes no other test.
    std::env::set_var("SSL_CERT_FILE", pki.ca());
    let url = tcp_url("localhost", "sslrootcert=system").await;
    assert_eq!(try_url(&url).await, Ok(true));
    // verify-full, as in libpq: the name is checked...
    let e = try_url(&tcp_url("127.0.0.1", "sslrootcert=system").await)
        .await
        .unwrap_err();
    assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
    // ...and nothing weaker is accepted with it.
    let e = try_url(&tcp_url("localhost", "sslmode=require&sslrootcert=system").await)
        .await
        .unwrap_err();
    assert!(e.contains("weak sslmode \"require\""), "{e}");
}

#[tokio::test]
async fn a_target_reached_over_verified_tls_builds_hands_out_and_migrates() {
    let pki = pki().await;
    let cluster = cluster().await;
    let dir = temp_dir();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("20240101000000_init.sql"),
        "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);",
    )
    .unwrap();
    let admin_url = tcp_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca().display()),
    )
    .await;
    let untrusted_url = tcp_url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pki.other_ca().display()
        ),
    )
    .await;
    let file = dir.path().join("tls.toml");
    std::fs::write(
        &file,
        format!(
            "[targets.secure]\nkind = \"postgres\"\nadmin_url = {admin_url:?}\n\
             public_host = \"localhost\"\npublic_port = {port}\npublic_sslmode = \"require\"\n\
             [targets.untrusted]\nkind = \"postgres\"\nadmin_url = {untrusted_url:?}\n\
             public_host = \"localhost\"\npublic_port = {port}\n\
             [blueprints.notes]\nmigrations = {m:?}\nmigrations_format = \"sqlx\"\npool_size = 1\n",
            port = cluster.postgres.port(),
            m = migrations.display().to_string(),
        ),
    )
    .unwrap();
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("config");
    let app = TestApp::spawn_with(cluster.clone(), config).await;

    let env = app
        .create(json!({
            "key": "tls/1", "target": "secure", "blueprint": "notes",
            "migrations": [{ "name": "20240102000000_pr.sql", "sql": "ALTER TABLE notes ADD COLUMN tag text;" }]
        }))
        .await;
    let uri = env["connection"]["uri"].as_str().unwrap();
    assert!(uri.contains("sslmode=require"), "{uri}");
    // The handed-out string works with a TLS client, over TLS, and holds the migrations.
    let client = PgConnector::parse(uri).unwrap().connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
             (SELECT count(*) FROM _sqlx_migrations)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, i64>(1)), (true, 2));
    drop(client);
    let (status, deleted) = app.delete(&env_path("tls/1")).await;
    assert_eq!(
        (status.as_u16(), deleted["state"].as_str()),
        (200, Some("deleted"))
    );

    // A certificate from another CA: refused before any credential is sent, named in the error.
    let res = app
        .http
        .post(format!("{}/v1/environments", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "key": "tls/2", "target": "untrusted" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let problem: serde_json::Value = res.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("certificate"), "{problem}");
    assert!(!detail.contains(TLS_ADMIN_PASSWORD), "{problem}");
}
