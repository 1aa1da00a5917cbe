//! previewdb: isolated, pre-seeded PostgreSQL environments for pull requests, over REST.

pub mod domain;
pub mod embedded;
pub mod backend;
pub mod configuration;
pub mod store;
pub mod sqlexec;
pub mod environments;
pub mod http;
pub mod startup;
pub mod dev;
pub mod cli;
pub mod blueprint;
pub mod lifecycle;
