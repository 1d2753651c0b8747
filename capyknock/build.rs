//! Builds the XDP program (`capyknock-ebpf`) with aya-build and the pinned nightly when the
//! `ebpf` feature is on (the default), so a plain `cargo build` yields a complete binary.
//! Without `ebpf`, or for non-Linux targets, it writes an empty placeholder object: the crate
//! still compiles on stable Rust with no bpf-linker, and the daemon refuses XDP capture with a
//! clear error (`XdpError::NotBuilt`). `cargo xtask setup` installs the pinned nightly, its
//! `rust-src` and a matching bpf-linker.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_OS");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" && std::env::var_os("CARGO_FEATURE_EBPF").is_some() {
        return ebpf::build();
    }
    let out_dir = std::env::var("OUT_DIR")?;
    std::fs::write(std::path::Path::new(&out_dir).join("capyknock-xdp"), [])?;
    Ok(())
}

#[cfg(feature = "ebpf")]
mod ebpf {
    use anyhow::Context as _;

    /// Nightly toolchain that compiles the eBPF object. Keep in sync with xtask's setup
    /// (`xtask/src/setup.rs`) and docs/TOOLCHAIN.md.
    const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

    pub fn build() -> Result<(), Box<dyn std::error::Error>> {
        let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../capyknock-ebpf");
        let package = aya_build::Package {
            name: "capyknock-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        };
        aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
            .with_context(|| {
                format!(
                    "building the XDP program with {EBPF_TOOLCHAIN} failed; run `cargo xtask \
                     setup` to install the toolchain, its rust-src and bpf-linker"
                )
            })
            .map_err(Into::into)
    }
}

#[cfg(not(feature = "ebpf"))]
mod ebpf {
    pub fn build() -> Result<(), Box<dyn std::error::Error>> {
        Err("CARGO_FEATURE_EBPF set without the ebpf feature".into())
    }
}
