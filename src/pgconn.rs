//! How previewdb reaches a PostgreSQL server: a connection string read the way libpq reads its
//! `sslmode` and `sslrootcert`, and one TLS connector (rustls) shared by every connection made
//! from it — the control store's pool, a target's admin, template builds and migration
//! sessions, sqlx's included — and the ids of the advisory locks taken over them.
//!
//! tokio-postgres knows only `disable | prefer | require`; `verify-ca`, `verify-full` and
//! `sslrootcert` are taken out of the URL here and enforced by the certificate verifier;
//! `sslrootcert=system` is the operating system's trust store (rustls-native-certs), and as in
//! libpq 16 it means `verify-full` and refuses any weaker `sslmode`.

use anyhow::{anyhow, bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, minus `allow` (which no server needs today).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, the certificate unchecked.
    Prefer,
    /// TLS or no connection; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, the certificate chained to a trusted root.
    VerifyCa,
    /// TLS, the certificate chained to a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => bail!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// Connection settings and the TLS connector that honours them.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    /// Settings every session starts with (`-c name=value`), e.g. the role it acts as.
    settings: Vec<(String, String)>,
    /// `sslrootcert`: whom a certificate must chain to.
    roots: Roots,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgConnector {
    // The config holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// Reads a connection string (URL or `key=value` form). Errors name the problem, never the
    /// password.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, sslmode, root_cert) = take_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| anyhow!("not a PostgreSQL connection string: {e}"))?;
        let roots = match root_cert.as_deref() {
            None => Roots::Webpki,
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
        };
        let ssl_mode = match (sslmode, &roots) {
            (Some(m), _) => SslMode::parse(&m)?,
            // As libpq (16+): the system's roots mean verify-full, and nothing weaker.
            (None, Roots::System) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if roots == Roots::System && ssl_mode != SslMode::VerifyFull {
            bail!(
                "weak sslmode {:?} may not be used with sslrootcert=system (use \"verify-full\")",
                sslmode_name(ssl_mode)
            );
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("previewdb");
        }
        let tls = MakeRustlsConnect::new(client_config(ssl_mode, &roots)?);
        Ok(Self {
            config,
            ssl_mode,
            settings: vec![],
            roots,
            tls,
        })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, database: &str) -> Self {
        let mut c = self.clone();
        c.config.dbname(database);
        c
    }

    /// The same server, logging in as `user` with `password`: a session that cannot become
    /// anyone else, which is the only kind that may run SQL a caller wrote.
    pub fn with_login(&self, user: &str, password: &str) -> Self {
        let mut c = self.clone();
        c.config.user(user);
        c.config.password(password);
        c.settings.retain(|(n, _)| n != "role");
        c.config.options(c.options());
        c
    }

    fn options(&self) -> String {
        let options: Vec<String> = self
            .settings
            .iter()
            .map(|(n, v)| format!("-c {n}={v}"))
            .collect();
        options.join(" ")
    }

    /// The same, sessions named `name` in `pg_stat_activity`, so they can be found and ended.
    pub fn with_application_name(&self, name: &str) -> Self {
        let mut c = self.clone();
        c.config.application_name(name);
        c
    }

    /// The same, every session starting with `name = value`. The value must hold no spaces or
    /// backslashes (it travels in the startup packet's `options`); previewdb passes identifiers.
    pub fn with_setting(&self, name: &str, value: &str) -> Self {
        assert!(
            !value.contains([' ', '\\']),
            "setting {name} holds a space or backslash"
        );
        let mut c = self.clone();
        c.settings.retain(|(n, _)| n != name);
        c.settings.push((name.to_owned(), value.to_owned()));
        c.config.options(c.options());
        c
    }

    /// One connection, its I/O driven by a task of its own; closed when the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub fn pool(&self, max_size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
        use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
        let mgr = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Ok(Pool::builder(mgr)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(6)))
            .build()?)
    }

    /// The same settings for sqlx, which reads `sslmode`/`sslrootcert` as libpq does.
    pub fn sqlx_options(&self) -> sqlx::postgres::PgConnectOptions {
        use sqlx::postgres::PgSslMode;
        use tokio_postgres::config::Host;
        let c = &self.config;
        let mut opts = sqlx::postgres::PgConnectOptions::new()
            .username(c.get_user().unwrap_or("postgres"))
            .database(c.get_dbname().unwrap_or("postgres"))
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        match &self.roots {
            Roots::Webpki => {}
            Roots::File(root) => opts = opts.ssl_root_cert(root),
            // sqlx knows no "system": the same certificates, handed over as PEM.
            Roots::System => {
                if let Ok(certs) = system_roots() {
                    opts = opts.ssl_root_cert_from_pem(to_pem(certs));
                }
            }
        }
        if let Some(port) = c.get_ports().first() {
            opts = opts.port(*port);
        }
        match c.get_hosts().first() {
            Some(Host::Unix(path)) => opts = opts.socket(path),
            Some(Host::Tcp(host)) => opts = opts.host(host),
            None => {}
        }
        if let Some(pw) = c.get_password() {
            opts = opts.password(&String::from_utf8_lossy(pw));
        }
        if let Some(name) = c.get_application_name() {
            opts = opts.application_name(name);
        }
        opts = opts.options(self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        opts
    }
}

/// An error with its causes, `: `-separated, each once: tokio-postgres and deadpool print only
/// the outermost ("error performing TLS handshake"), while what an operator needs is the
/// innermost ("invalid peer certificate: UnknownIssuer"). The one chain formatter: the service's
/// logs and the CLI's messages use it too.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Splits `sslmode` and `sslrootcert` off a URL's query (tokio-postgres would refuse
/// `verify-*` and `sslrootcert`). The `key=value` form keeps its `sslmode` as tokio-postgres
/// reads it.
fn take_tls_params(url: &str) -> anyhow::Result<(String, Option<String>, Option<String>)> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let mode = url
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sslmode="))
            .map(|m| m.trim_matches('\'').to_owned());
        return Ok((url.to_owned(), mode, None));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut sslmode, mut root) = (None, None);
    let mut kept = vec![];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|s| s.into_owned())
                .with_context(|| format!("{k}: not UTF-8"))
        };
        match k {
            "sslmode" => sslmode = Some(value()?),
            "sslrootcert" => root = Some(value()?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, sslmode, root))
}

/// Whom a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// No `sslrootcert`: the Mozilla roots compiled in (webpki-roots).
    Webpki,
    /// `sslrootcert=PATH`: the certificates in that PEM file.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` override where it is read from, as in OpenSSL).
    System,
}

fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// The operating system's trusted roots, read once per process.
fn system_roots() -> anyhow::Result<&'static [CertificateDer<'static>]> {
    static ROOTS: std::sync::OnceLock<Result<Vec<CertificateDer<'static>>, String>> =
        std::sync::OnceLock::new();
    let loaded = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            Err(format!(
                "sslrootcert=system: the operating system's trust store holds no certificate{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join("; "))
                }
            ))
        } else {
            Ok(found.certs)
        }
    });
    loaded.as_deref().map_err(|e| anyhow!("{e}"))
}

fn to_pem(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine;
    let mut pem = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

fn client_config(mode: SslMode, roots: &Roots) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // As libpq: `require` with a root certificate behaves as `verify-ca`.
    let verify = match (mode, roots) {
        (SslMode::VerifyFull, _) => Verify::Full,
        (SslMode::VerifyCa, _) | (SslMode::Require, Roots::File(_)) => Verify::Chain,
        _ => Verify::Nothing,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AcceptAnyCertificate(provider.clone())),
        Verify::Chain | Verify::Full => {
            let roots = Arc::new(root_store(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("TLS verifier")?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(PartialEq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

fn root_store(roots: &Roots) -> anyhow::Result<RootCertStore> {
    let path = match roots {
        Roots::Webpki => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        Roots::System => {
            let mut store = RootCertStore::empty();
            // Some stores carry certificates webpki cannot read; the rest are enough.
            let (added, _ignored) =
                store.add_parsable_certificates(system_roots()?.iter().cloned());
            if added == 0 {
                bail!("sslrootcert=system: no certificate of the operating system's trust store is usable");
            }
            return Ok(store);
        }
        Roots::File(path) => path,
    };
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("sslrootcert {}: cannot read", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("sslrootcert {}: not PEM", path.display()))?;
        store
            .add(cert)
            .with_context(|| format!("sslrootcert {}: not a certificate", path.display()))?;
    }
    if store.is_empty() {
        bail!("sslrootcert {}: holds no certificate", path.display());
    }
    Ok(store)
}

/// `sslmode=prefer|require` without a root: encrypted, the peer unauthenticated (libpq's
/// meaning). The handshake's signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

/// `verify-ca`: the chain must lead to a trusted root; the name in it is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The PostgreSQL advisory-lock id of `name` in `namespace`, so that locks of different kinds
/// (an environment key, a template, a pool) can never share an id.
pub fn advisory_key(namespace: &str, name: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("previewdb:{namespace}:{name}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_read_and_removed_from_the_url() {
        let c = PgConnector::parse(
            "postgres://u:p@db.example:5433/app?sslmode=verify-full&application_name=x&sslrootcert=system",
        )
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.roots, Roots::System);
        assert_eq!(c.config.get_application_name(), Some("x"));
        assert_eq!(c.config.get_ports(), &[5433]);
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        let plain = PgConnector::parse("postgres://u@h/db").unwrap();
        assert_eq!(plain.ssl_mode, SslMode::Prefer, "libpq's default");
        assert_eq!(plain.config.get_application_name(), Some("previewdb"));
        let kv = PgConnector::parse("host=h user=u sslmode=disable").unwrap();
        assert_eq!(kv.ssl_mode, SslMode::Disable);
        // As libpq: the system's roots default to verify-full.
        let system = PgConnector::parse("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(system.ssl_mode, SslMode::VerifyFull);
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let e = PgConnector::parse("postgres://u@h/db?sslmode=verify-maybe").unwrap_err();
        assert!(e.to_string().contains("sslmode \"verify-maybe\""), "{e}");
        let e =
            PgConnector::parse("postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent.pem")
                .unwrap_err();
        assert!(
            format!("{e:#}").contains("sslrootcert /nonexistent.pem"),
            "{e:#}"
        );
        for weak in ["require", "verify-ca", "prefer", "disable"] {
            let e = PgConnector::parse(&format!(
                "postgres://u@h/db?sslmode={weak}&sslrootcert=system"
            ))
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("weak sslmode \"{weak}\" may not be used")),
                "{e}"
            );
        }
        let e = PgConnector::parse("postgres://u:secret-pw@h/db?bogus=1").unwrap_err();
        assert!(!format!("{e:#}").contains("secret-pw"), "{e:#}");
    }

    #[test]
    fn sqlx_gets_the_same_settings() {
        let c = PgConnector::parse("postgres://u:pw@db.example:6543/app?sslmode=require")
            .unwrap()
            .with_setting("role", "someone")
            .with_login("env_role", "pw2")
            .with_setting("search_path", "env_role,public")
            .with_application_name("run-1");
        let o = c.sqlx_options();
        assert_eq!(o.get_host(), "db.example");
        assert_eq!(o.get_port(), 6543);
        assert_eq!(o.get_database(), Some("app"));
        assert_eq!(o.get_username(), "env_role");
        assert_eq!(o.get_application_name(), Some("run-1"));
        // A login never carries a role switch.
        assert_eq!(o.get_options(), Some("-c search_path=env_role,public"));
        assert_eq!(
            c.config().get_options(),
            Some("-c search_path=env_role,public")
        );
        assert_eq!(c.config().get_password(), Some(&b"pw2"[..]));
    }
}
