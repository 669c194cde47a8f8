//! Validated routing types: endpoints, pools and the table that maps (exposed model, path) to a pool.
//! Routing does no IO.
pub mod breaker;
pub mod endpoint;
pub mod families;
pub mod pool;
pub mod responses;
pub mod table;
