//! previewdb: isolated, pre-seeded PostgreSQL environments for pull requests, over REST.
//!
//! Layout, from the edge inwards (arrows only point down the list):
//!
//! - `main.rs`, [`cli`]: the binary — `serve`, `dev`, and the `env` client for pipelines.
//! - [`startup`]: wiring only; the store, targets, service and HTTP server from a [`configuration`].
//! - [`configuration`]: the TOML file into typed, resolved settings (blueprints read here).
//! - `listener`: the HTTPS listener (`tls_cert`/`tls_key`), handshakes bounded in time.
//! - `http`: routes, bearer auth, problem+json; handlers call the service only.
//! - [`service`]: the environment service, one file per kind of operation (`plan`, `create`,
//!   `operate`, `upkeep`, `snapshot`), its errors with the guide to every error type, and
//!   per-key leases (one change to a key at a time, across replicas); the audit trail's pages
//!   and notices (`audit`) and the webhook deliverer (`webhooks`).
//! - `metrics`: the Prometheus registry and the rendering of a service snapshot.
//! - `store`: the control-plane store — records, leases, the pool ledger, the audit trail and
//!   the webhooks' outbox (`events`, written in the transaction of each change) — and password
//!   sealing.
//! - [`backend`]: the `Backend` trait with the capabilities each kind declares, the registry
//!   that builds targets from their configuration, and the `postgres` and `neon` kinds.
//! - [`blueprint`]: a blueprint's files, their contents and hash.
//! - [`bounds`]: deadlines and per-target work queues, which bound all work.
//! - [`sqlexec`]: the SQL file executor (pg_dump output, seeds) and the migration formats.
//! - [`pgconn`]: how every connection to PostgreSQL is made (sslmode, TLS), advisory-lock ids.
//! - [`domain`]: values parsed once at the edge, secrets that never print, an environment's
//!   connection and resources, who acts (`Actor`) with what it may reach (`Reach`), and the
//!   lifecycle events of the audit trail and the webhooks told of them (`event`).
//! - [`embedded`], [`dev`]: the private PostgreSQL of `previewdb dev` and of the tests.

pub mod backend;
pub mod blueprint;
pub mod bounds;
pub mod cli;
pub mod configuration;
pub mod dev;
pub mod domain;
pub mod embedded;
mod http;
mod listener;
mod metrics;
pub mod pgconn;
pub mod service;
pub mod sqlexec;
pub mod startup;
mod store;
