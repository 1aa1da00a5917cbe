//! The integration tests, one binary with a module per area: black-box tests over HTTP against
//! real PostgreSQL (and a fake Neon), linked once and run side by side. Most modules share one
//! cluster (see `support`); those that change or count a whole cluster keep their own.

// A test binary has no public API to keep small, and its harness signals the processes it
// starts (kill, atexit, geteuid through libc).
#![allow(unreachable_pub, unsafe_code)]

mod action;
mod api;
mod api_tls;
mod audit;
mod blueprints;
mod cli;
mod edges;
mod logs;
mod metrics;
mod neon_api;
mod neon_backend;
mod openapi;
mod resilience;
mod schema_isolation;
mod scoped_tokens;
mod secrets;
mod soak;
mod sqlexec;
mod support;
mod target_down;
mod teardown;
mod tls;
