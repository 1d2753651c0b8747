//! The knock protocol: packet format, keys, TOTP, replay defence and the I/O-free verifier.
//!
//! Nothing here does I/O or reads the clock: time is passed in, so tests move time instead of
//! sleeping. See docs/PROTOCOL.md.
