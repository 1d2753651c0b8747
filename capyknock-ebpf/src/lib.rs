//! Empty library target: lets `capyknock` depend on this crate in `[build-dependencies]`, so cargo
//! rebuilds the eBPF object when its sources change. The program itself is `src/main.rs`.
#![no_std]
