//! CLI subcommands other than `serve` and `check`.
pub mod admin;
pub mod check;
pub mod keys;
