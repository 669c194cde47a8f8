//! Forwarding a client request to its endpoint and the answer back.
pub mod body;
pub mod capture;
pub mod forward;
pub mod headers;
pub mod log;
pub mod multipart;
pub mod retry;
pub mod rewrite;
pub mod stream;
pub mod usage;
