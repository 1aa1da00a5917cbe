//! previewdb: isolated, pre-seeded PostgreSQL environments for pull requests, over REST.

pub mod backend;
pub mod blueprint;
pub mod cli;
pub mod configuration;
pub mod dev;
pub mod domain;
pub mod embedded;
mod http;
mod metrics;
pub mod pgconn;
pub mod service;
pub mod sqlexec;
pub mod startup;
mod store;

/// The PostgreSQL advisory-lock id of `name` in `namespace`, so that locks of different kinds
/// (an environment key, a template, a pool) can never share an id.
pub fn advisory_key(namespace: &str, name: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("previewdb:{namespace}:{name}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}
