//! previewdb: isolated, pre-seeded PostgreSQL environments for pull requests, over REST.

pub mod backend;
pub mod blueprint;
pub mod cli;
pub mod configuration;
pub mod dev;
pub mod domain;
pub mod embedded;
pub mod environments;
pub mod http;
pub mod lifecycle;
pub mod sqlexec;
pub mod startup;
pub mod store;
