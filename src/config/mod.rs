//! The JSON config files: their serde mirror, and loading a directory of them into endpoints.
pub mod adapt;
pub mod load;
pub mod locate;
pub mod schema;
pub mod watch;
