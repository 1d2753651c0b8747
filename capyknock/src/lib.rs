//! capyknock: single packet authorization with one encrypted UDP knock and a TOTP code.
//!
//! The path of a knock through this crate (docs/ARCHITECTURE.md has the picture):
//! [`capture`] gets candidate packets (XDP ring buffer, libpcap or a UDP socket) ->
//! [`protocol`] decides, with no I/O, whether a packet grants anything -> [`firewall`] opens the
//! user's ports for the source address. [`server`] wires these into the daemon; [`client`] and
//! [`keygen`] are the user's side. `protocol` never imports `capture`, `firewall` or `server`.
//! Both sides read their config files through [`conf`] and write every secret or state file
//! through [`private_file`].

// `unsafe` only in the modules that talk to foreign interfaces, each allowing it by name:
// `capture::xdp` (the eBPF loader and ring buffer), `firewall::nftables::raw` (libnftnl) and
// `firewall::windows` (COM).
#![deny(unsafe_code)]

// The `client` feature is the knock side (stable Rust, libc only); `server` adds the daemon and
// what only it needs (capture, firewall, keygen). docs/PACKAGING.md.
#[cfg(feature = "server")]
pub mod capture;
#[cfg(feature = "client")]
pub mod cli_docs;
pub mod client;
pub mod conf;
pub mod error_chain;
#[cfg(feature = "server")]
pub mod firewall;
#[cfg(feature = "server")]
pub mod keygen;
// Only the server logs the values it formats (and it brings humantime).
#[cfg(feature = "server")]
pub mod log_fields;
pub mod ports;
pub mod private_file;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod tracing_setup;
