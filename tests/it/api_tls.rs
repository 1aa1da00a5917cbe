//! The API over TLS (`tls_cert`/`tls_key`): a CA and a server certificate made here, the app
//! started with them as an operator's file names them, and driven over HTTPS — and over plain
//! HTTP, by a client that does not trust the CA, and by one that connects and never speaks.

use crate::support::*;
use previewdb::configuration::Config;
use previewdb::startup::Application;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

/// The name the server certificate carries, resolved to the app's address by the client.
const HOST: &str = "previewdb.test";

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

/// A CA, a certificate for [`HOST`] signed by it (`server.crt`, `server.key`), a key of
/// nobody's certificate (`stranger.key`) and a file that is not PEM (`junk.pem`).
fn pki() -> Pki {
    let dir = temp_dir();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "previewdb API test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec![HOST.into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("server.crt", &server.pem());
    write("server.key", &key.serialize_pem());
    write(
        "stranger.key",
        &KeyPair::generate().unwrap().serialize_pem(),
    );
    write("junk.pem", "this is not a certificate\n");
    Pki {
        ca_pem: ca.pem(),
        dir,
    }
}

/// The shared cluster's configuration with `extra` merged in from a file in the PKI's
/// directory, as `previewdb dev --config extra.toml` does.
async fn config_with(pki: &Pki, extra: &str) -> anyhow::Result<Config> {
    let file = pki.dir.path().join("extra.toml");
    std::fs::write(&file, extra).unwrap();
    let mut config = cluster().await.config.clone();
    config.merge_file(&file)?;
    Ok(config)
}

/// TLS with paths relative to the file, and a short handshake timeout.
const TLS: &str =
    "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\ntls_handshake_timeout = \"1s\"\n";

struct Running {
    app: TestApp,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(pki: &Pki) -> Running {
    let config = config_with(pki, TLS).await.expect("config with TLS");
    let app = Application::build(&config).await.expect("app builds");
    assert_eq!(app.scheme(), "https");
    let addr: SocketAddr = ([127, 0, 0, 1], app.port()).into();
    let envs = app.environments();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Running {
        app: TestApp {
            base: format!("https://{HOST}:{}", addr.port()),
            http: client(pki, addr, true),
            cluster: cluster().await,
            app: envs,
        },
        addr,
        stop,
        served,
    }
}

/// A client that reaches [`HOST`] at `addr`, trusting the test CA or not.
fn client(pki: &Pki, addr: SocketAddr, trust: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .resolve(HOST, addr)
        .timeout(Duration::from_secs(10));
    if trust {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    previewdb::pgconn::describe(e)
}

#[tokio::test]
async fn https_serves_the_api_and_nothing_else_gets_in() {
    let pki = pki();
    let run = start(&pki).await;
    let app = &run.app;

    let (status, body) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let env = app.create(json!({ "key": "api-tls/1" })).await;
    assert_eq!(env["key"], "api-tls/1", "{env}");
    let (status, _) = app.delete(&env_path("api-tls/1")).await;
    assert_eq!(status.as_u16(), 200);

    // TLS 1.2 is enough; HTTP/1.1 is what is spoken.
    let tls12 = reqwest::Client::builder()
        .resolve(HOST, run.addr)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let res = tls12
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), res.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // Plain HTTP to the same port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{}/readyz", run.addr))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A client that does not trust the CA refuses the server before sending its token.
    let e = client(&pki, run.addr, false)
        .get(format!("{}/v1/environments", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));

    run.stop.send(()).unwrap();
    run.served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_never_handshakes_is_dropped_and_blocks_no_one() {
    let pki = pki();
    let run = start(&pki).await;

    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    // Others are served meanwhile: handshakes do not wait for one another.
    let (status, _) = run
        .app
        .call(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(status.as_u16(), 200);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection within its handshake timeout");
    let waited = started.elapsed();
    // Closed (EOF, or reset), with nothing sent.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}, the timeout is 1s"
    );

    // Shutdown is still graceful and prompt, with a half-open client and an idle keep-alive
    // connection (the client above keeps one in its pool).
    let _another_silent = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    let started = Instant::now();
    run.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run.served)
        .await
        .expect("run_until returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let refused = tokio::net::TcpStream::connect(run.addr).await;
    assert!(refused.is_err(), "still listening after shutdown");
}

#[tokio::test]
async fn tls_settings_are_checked_when_the_config_loads() {
    let pki = pki();
    let dir = pki.dir.path();
    let error = |extra: &'static str| {
        let pki = &pki;
        async move { format!("{:#}", config_with(pki, extra).await.unwrap_err()) }
    };
    let named = |e: &str, wanted: &str| assert!(e.contains(wanted), "wanted {wanted:?} in: {e}");

    named(
        &error("tls_cert = \"server.crt\"").await,
        "tls_cert: given without tls_key",
    );
    named(
        &error("tls_key = \"server.key\"").await,
        "tls_key: given without tls_cert",
    );
    let missing = dir.join("missing.crt");
    named(
        &error("tls_cert = \"missing.crt\"\ntls_key = \"server.key\"").await,
        &format!("tls_cert {}: cannot read", missing.display()),
    );
    named(
        &error("tls_cert = \"server.crt\"\ntls_key = \"missing.key\"").await,
        &format!("tls_key {}: cannot read", dir.join("missing.key").display()),
    );
    named(
        &error("tls_cert = \"junk.pem\"\ntls_key = \"server.key\"").await,
        &format!("tls_cert {}: not PEM", dir.join("junk.pem").display()),
    );
    named(
        &error("tls_cert = \"server.crt\"\ntls_key = \"junk.pem\"").await,
        &format!("tls_key {}: not PEM", dir.join("junk.pem").display()),
    );
    // A certificate file given as the key holds no key.
    named(
        &error("tls_cert = \"server.crt\"\ntls_key = \"server.crt\"").await,
        "tls_key",
    );
    named(
        &error("tls_cert = \"server.crt\"\ntls_key = \"stranger.key\"").await,
        &format!(
            "tls_key {}: does not match the certificate in tls_cert {}",
            dir.join("stranger.key").display(),
            dir.join("server.crt").display()
        ),
    );
    named(
        &error("tls_handshake_timeout = \"1s\"").await,
        "tls_handshake_timeout: given without tls_cert and tls_key",
    );
    named(
        &error(
            "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\ntls_handshake_timeout = \"soon\"",
        )
        .await,
        "tls_handshake_timeout",
    );

    // Good files load, paths resolved against the file's directory; without TLS the scheme is
    // plain HTTP.
    let config = config_with(&pki, TLS).await.unwrap();
    let tls = config.tls.as_ref().expect("TLS configured");
    assert_eq!(
        (tls.cert.as_path(), tls.key.as_path(), tls.handshake_timeout),
        (
            dir.join("server.crt").as_path(),
            dir.join("server.key").as_path(),
            Duration::from_secs(1)
        )
    );
    assert!(cluster().await.config.tls.is_none());
    assert!(!format!("{config:?}").contains("PRIVATE KEY"));
}
