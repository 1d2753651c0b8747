//! Builds the XDP program (`capyknock-ebpf`) with aya-build and the pinned nightly, so a plain
//! `cargo build` yields a complete binary. Skipped for non-Linux targets, where no eBPF is used.
//! `cargo xtask setup` installs the pinned nightly, its `rust-src` and a matching bpf-linker.

use anyhow::Context as _;

/// Nightly toolchain that compiles the eBPF object. Keep in sync with xtask's setup
/// (`xtask/src/setup.rs`) and docs/TOOLCHAIN.md.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_OS");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return Ok(());
    }
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../capyknock-ebpf");
    let package = aya_build::Package {
        name: "capyknock-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN)).with_context(
        || {
            format!(
                "building the XDP program with {EBPF_TOOLCHAIN} failed; run `cargo xtask setup` \
                 to install the toolchain, its rust-src and bpf-linker"
            )
        },
    )
}
