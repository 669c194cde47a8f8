//! Integration tests: the real server on 127.0.0.1:0 against an in-process mock upstream.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support code fails the test by panicking"
)]
mod access;
mod adaptation;
mod admin_api;
mod admin_credential;
mod admission;
mod check;
mod cli;
mod connectivity;
mod database_admission;
mod demo;
mod deploy;
mod errors;
mod families;
mod forwarding;
mod hardening;
mod harness;
mod health;
mod helpers;
mod identity;
mod images;
mod limits;
mod logs;
mod metrics;
mod mock;
mod models;
mod oidc;
mod overhead;
mod pools;
mod postgres;
mod prometheus;
mod realtime;
mod redis_server;
mod reload;
mod reload_stall;
mod replicas;
mod shared_state;
mod shutdown;
mod stateful;
mod status_page;
mod store;
mod streaming;
mod tls_mock;
mod traces;
mod uploads;
mod ws_mock;
