//! The lock client: the sans-IO core and the async library around it.

mod api;
mod core;

pub use self::core::{ClientConfig, ClientCore, ClientOutput, InvalidateToken};
pub use api::{
    InvalidateFn, LockClient, LockClientConfig, LockError, LockGuard, CACHE_LOCKS_DEFAULT,
};
