//! Code shared by the capyknock XDP program (kernel side) and the `capyknock` binary.
//!
//! Everything here is `no_std`, allocation-free and panic-free, so the very same functions run in
//! the kernel (compiled to BPF) and in userspace, where they are unit-tested, property-tested and
//! fuzzed. The `user` feature adds the userspace-only impls (`aya::Pod` for map values).
#![no_std]
// The only `unsafe` is the `aya::Pod` impls of the map values (`maps::pod`).
#![deny(unsafe_code)]

pub mod counters;
pub mod frame;
pub mod maps;
pub mod prefilter;
pub mod ratelimit;
pub mod siphash;
pub mod wire;

#[cfg(test)]
extern crate std;
