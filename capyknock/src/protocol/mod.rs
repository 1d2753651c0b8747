//! The knock protocol: packet format, keys, TOTP, replay defence and the I/O-free verifier.
//!
//! Nothing here does I/O or reads the clock: time is passed in, so tests move time instead of
//! sleeping. See docs/PROTOCOL.md.
//!
//! - [`keys`]: user ids, user keys and derived keys, TOTP secrets.
//! - [`totp`]: TOTP codes (totp-rs).
//! - [`users`]: the server's user table.
//! - [`payload`]: the encrypted, padded payload.
//! - [`packet`]: building (client) and opening knock packets.
//! - [`replay`]: one-time use of codes and packets.
//! - [`verify`]: the verifier.

pub mod keys;
pub mod packet;
pub mod payload;
pub mod replay;
pub mod totp;
pub mod users;
pub mod verify;

#[cfg(test)]
mod vectors;

/// Unix seconds of a [`std::time::SystemTime`]; 0 for times before 1970.
#[must_use]
pub fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
