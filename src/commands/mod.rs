//! CLI subcommands other than `serve` and `check`.
pub mod keys;
