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
