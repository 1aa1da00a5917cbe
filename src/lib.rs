//! previewdb: isolated, pre-seeded PostgreSQL environments for pull requests, over REST.

pub mod domain;
pub mod embedded;
pub mod backend;
pub mod configuration;
