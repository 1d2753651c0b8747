//! The daemon: configuration, state directory, control socket, and the wiring of capture ->
//! protocol -> firewall.

pub mod config;
pub mod control;
pub mod logging;
pub mod state;
pub mod status;
