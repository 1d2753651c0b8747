//! Fleet mode (issue 16, docs/FLEET.md): servers that share one-time knocks through etcd.
//!
//! [`config`] is the `[cluster]` section (without it the daemon is a single server and needs no
//! etcd); [`keys`] the key layout; [`store`] the etcd client, its health probe and the claim
//! transaction; [`bans`] writes bans to etcd and applies the fleet's through a watch; [`grants`]
//! shares group grants (`scope = "group:NAME"`) the same way; [`watch_retry`] is how those
//! watches start again after a break (backoff, one log line for the break and one for the return),
//! [`watch_health`] how far behind the store each is (for `status`); [`users`] seals the users
//! kept in the store (`users_from_store`), [`user_sync`] keeps a node's copy of them and
//! [`user_admin`] is `keygen --cluster`'s side; [`fleet`]
//! hooks the claim into the daemon between verification and the worker
//! (which opens the firewall). The store parts are Linux-only for now; elsewhere [`unsupported`]
//! gives the daemon the same names and refuses `[cluster]` with a clear error.

#[cfg(target_os = "linux")]
pub mod bans;
pub mod config;
#[cfg(target_os = "linux")]
pub mod fleet;
#[cfg(target_os = "linux")]
pub mod grants;
pub mod keys;
#[cfg(target_os = "linux")]
pub mod store;
#[cfg(not(target_os = "linux"))]
pub mod unsupported;
#[cfg(target_os = "linux")]
pub mod user_admin;
#[cfg(target_os = "linux")]
pub mod user_sync;
pub mod users;
#[cfg(target_os = "linux")]
pub mod watch_health;
#[cfg(target_os = "linux")]
pub mod watch_retry;
#[cfg(not(target_os = "linux"))]
pub use unsupported::{fleet, store};
