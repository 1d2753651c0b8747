//! The daemon: configuration, state directory, control socket, and the wiring of capture ->
//! protocol -> firewall.
//!
//! [`config`] reads and validates the file; [`daemon`] runs the core task (capture -> verify ->
//! worker) with signals and reload ([`reload`]); [`worker`] owns the firewall and the state
//! directory ([`state`]); [`control`] is the control socket and its client; [`logging`] writes
//! the knock lines fail2ban reads; [`status`] is what `capyknock status` shows; [`metrics`] is
//! the optional OpenMetrics endpoint; [`privsep`] splits the daemon into an unprivileged,
//! seccomp-filtered network process and a firewall helper with `CAP_NET_ADMIN` only; [`cli`]
//! holds the server-side subcommands; [`cluster`] is fleet mode on etcd (docs/FLEET.md);
//! [`realtime`] runs the knock path at `SCHED_FIFO` when `realtime_priority` asks for it;
//! [`win_acl`] holds the Windows ACLs (control pipe, `%ProgramData%`, the config check),
//! [`win_host`] what the Windows host tells about itself (`ProgramData`, boot id, addresses) and
//! [`service`] the Windows service.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod knock_sink;
pub mod logging;
pub mod memory;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod privsep;
pub mod realtime;
pub mod reload;
pub mod replay_flusher;
pub mod replay_store;
pub mod sddl;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "windows-service's define_windows_service! expands to the service's extern entry point"
)]
pub mod service;
pub mod state;
pub mod status;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "security descriptors (control pipe, ProgramData, the config check) through Win32 calls"
)]
pub mod win_acl;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "the ProgramData folder and the boot id's volatile registry key through Win32 calls"
)]
pub mod win_host;
pub mod worker;
