//! Forwarding a client request to its endpoint and the answer back.
pub mod body;
pub mod forward;
pub mod headers;
pub mod log;
pub mod stream;
pub mod usage;
