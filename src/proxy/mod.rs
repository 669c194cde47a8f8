//! The toolkit the pipeline stages use: JSON bodies and their rewrites, multipart uploads, header
//! hygiene, the upstream call, and the response stream with its taps.
pub mod capture;
pub mod forward;
pub mod headers;
pub mod image_answer;
pub mod json;
pub mod multipart;
pub mod rewrite;
pub mod sse;
pub mod stream;
pub mod usage;
