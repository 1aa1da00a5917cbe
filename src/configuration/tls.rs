//! `tls_cert` / `tls_key`: the HTTP listener's certificate chain and private key, PEM files read
//! and checked when the configuration loads (both or neither; the key must match the chain's
//! first certificate), and the rustls server configuration built from them once.

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// TLS on the HTTP listener: 1.2 and 1.3 only (rustls knows no older), HTTP/1.1 over ALPN.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Longest a client may take from TCP connect to a finished handshake before the server
    /// closes the connection.
    pub handshake_timeout: Duration,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ListenerTls {
    // The server configuration holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Reads `cert` and `key` (both already resolved against the config file's directory).
    pub fn load(cert: &Path, key: &Path, handshake_timeout: Duration) -> anyhow::Result<Self> {
        let chain = read_chain(cert)?;
        let private = read_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => anyhow!(
                    "tls_key {}: does not match the certificate in tls_cert {}",
                    key.display(),
                    cert.display()
                ),
                other => anyhow!(
                    "tls_cert {} / tls_key {}: {other}",
                    cert.display(),
                    key.display()
                ),
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            handshake_timeout,
            server: Arc::new(server),
        })
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("tls_cert {}: cannot read", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("tls_cert {}: not PEM: {e}", path.display()))?;
    if chain.is_empty() {
        bail!(
            "tls_cert {}: not PEM: holds no CERTIFICATE block",
            path.display()
        );
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("tls_key {}: cannot read", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "tls_key {}: not PEM: holds no PRIVATE KEY block",
            path.display()
        ),
        other => anyhow!("tls_key {}: not PEM: {other}", path.display()),
    })
}
