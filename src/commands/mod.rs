//! CLI subcommands other than `serve`.
pub mod admin;
