//! The daemon: configuration, state directory, control socket, and the wiring of capture ->
//! protocol -> firewall.
//!
//! [`config`] reads and validates the file; [`daemon`] runs the core task (capture -> verify ->
//! worker) with signals and reload ([`reload`]); [`worker`] owns the firewall and the state
//! directory ([`state`]); [`control`] is the control socket and its client; [`logging`] writes
//! the knock lines fail2ban reads; [`status`] is what `capyknock status` shows; [`metrics`] is
//! the optional OpenMetrics endpoint; [`privsep`] splits the daemon into an unprivileged,
//! seccomp-filtered network process and a firewall helper with `CAP_NET_ADMIN` only; [`cli`]
//! holds the server-side subcommands; [`pipe_acl`] is the control pipe's ACL on Windows.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod knock_sink;
pub mod logging;
pub mod metrics;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "builds the control pipe's security descriptor through Win32 calls"
)]
pub mod pipe_acl;
#[cfg(target_os = "linux")]
pub mod privsep;
pub mod reload;
pub mod replay_store;
pub mod state;
pub mod status;
pub mod worker;
