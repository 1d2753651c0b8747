//! Rebuild the eBPF object when bpf-linker changes (a new LLVM means new bitcode handling).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
