//! Throwaway network labs, shared by capyknock's privileged tests (`tests/`) and xtask's `demo`
//! and `load` benchmark, so each idea is written once:
//!
//! - [`netns`]: named network namespaces deleted on drop, veth pairs and their addresses,
//!   running a closure or a program inside a namespace, sending UDP from one;
//! - [`daemon`]: the real `capyknock server` in a namespace as a guard (readiness, signals, its
//!   log, stopped on drop);
//! - [`service`]: a TCP greeting-and-echo service standing in for sshd;
//! - [`probe`]: "does this TCP port answer", and waiting until it does or does not;
//! - [`etcd`]: a throwaway etcd cluster (members in a namespace of their own) for fleet labs;
//! - [`flood`]: a paced or unpaced `sendmmsg` UDP flood;
//! - [`clock`]: Unix seconds, the TOTP step, a thread's CPU time;
//! - [`wait`]: waits that notice Ctrl-C, so tasks unwind through the guards;
//! - [`process`], [`files`], [`config`]: programs with argv and no terminal, private files and a
//!   temporary directory, the lab's server config and keygen's otpauth URI.
//!
//! Every guard cleans up when dropped, on panic too. Functions return [`Result`]: xtask passes
//! errors on with `?`, tests `.unwrap()` them (the error's `Debug` is its message and causes).
//!
//! This crate does not depend on the `capyknock` crate, whose build script needs bpf-linker:
//! xtask builds on a fresh machine, before its own `setup` has installed that.
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod daemon;
mod error;
pub mod etcd;
pub mod files;
pub mod flood;
pub mod netns;
pub mod probe;
pub mod process;
pub mod service;
pub mod wait;

pub use capyknock_common::wire::DEFAULT_KNOCK_PORT as KNOCK_PORT;
pub use nix::sys::signal::Signal;

pub use crate::error::{Error, Result};

/// Whether the process runs as root (labs need it: namespaces, XDP, nftables).
#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
