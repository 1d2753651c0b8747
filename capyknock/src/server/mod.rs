//! The daemon: configuration, state directory, control socket, and the wiring of capture ->
//! protocol -> firewall.
//!
//! [`config`] reads and validates the file; [`daemon`] runs the core task (capture -> verify ->
//! worker) with signals and reload ([`reload`]); [`worker`] owns the firewall and the state
//! directory ([`state`]); [`control`] is the control socket and its client; [`logging`] writes
//! the knock lines fail2ban reads; [`status`] is what `capyknock status` shows; [`metrics`] is
//! the optional OpenMetrics endpoint; [`privsep`] splits the daemon into an unprivileged,
//! seccomp-filtered network process and a firewall helper with `CAP_NET_ADMIN` only; [`cli`]
//! holds the server-side subcommands; [`cluster`] is fleet mode on etcd (docs/FLEET.md).

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
#[cfg(target_os = "linux")]
pub mod daemon;
#[cfg(unix)]
pub mod knock_sink;
pub mod logging;
pub mod memory;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod privsep;
pub mod reload;
pub mod replay_flusher;
pub mod replay_store;
pub mod state;
pub mod status;
pub mod worker;
