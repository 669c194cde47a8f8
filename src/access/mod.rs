//! Client access control: keys (stored as SHA-256 digests), model and operation allow-lists,
//! request, token and concurrency limits, quota policies with per-owner overrides, and the
//! admin credential. The pipeline's admit stage calls [`admit::AccessControl::admit`].
pub mod admin;
pub mod admit;
pub mod database;
pub mod file;
pub mod key;
pub mod limits;
pub mod listing;
pub mod metrics;
pub mod quota;
pub mod reload;
pub mod startup;
pub mod store;
pub mod table;

/// `--access-control`: whether requests need a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessMode {
    /// On as soon as a key file is loaded, and from then on until restart.
    Auto,
    /// Every proxied request needs a key, even with no key file (all are then refused).
    On,
    /// No key needed: llmux behaves as without access control.
    Off,
}
