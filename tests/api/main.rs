//! Integration tests: the real server on 127.0.0.1:0 against an in-process mock upstream.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support code fails the test by panicking"
)]
mod adaptation;
mod admin_api;
mod check;
mod cli;
mod demo;
mod deploy;
mod errors;
mod forwarding;
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
mod pools;
mod postgres;
mod prometheus;
mod reload;
mod reload_stall;
mod shutdown;
mod status_page;
mod store;
mod streaming;
mod uploads;
