//! The user's side: client profiles, the `knock` command and the ssh `ProxyCommand` relay.
//!
//! - [`config`]: the client config file (`[profile.NAME]` tables), default location, adding a
//!   profile without touching the rest of the file.
//! - [`args`]: `capyknock knock`'s command line.
//! - [`knock`]: the flow: check the port, get a code, send, wait, re-check, retry; exit codes.
//! - [`probe`]: name resolution (IPv4 and IPv6) and TCP port checks.
//! - [`code`]: the TOTP code from the terminal, `--otp`, stdin, or a machine profile's secret.
//! - [`send`]: building the knock packet and sending it a few times.
//! - [`proxy`]: the stdin/stdout relay for ssh.
//!
//! Works on Linux and Windows (and other Unix systems): nothing here needs privileges.

pub mod args;
pub mod code;
pub mod config;
pub mod knock;
pub mod probe;
pub mod proxy;
pub mod send;

pub use args::KnockArgs;
pub use knock::{KnockError, Outcome, run as knock};
