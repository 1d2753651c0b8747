//! Names and sizes of the BPF maps shared between the XDP program and its userspace loader.
//!
//! The loader looks maps up by these names; a rename on one side without the other fails loudly
//! at load time (map not found) instead of silently.

/// `HashMap<u16, u8>`: UDP destination ports (host byte order) that are knock ports. The value is
/// unused (1); presence is what counts.
pub const KNOCK_PORTS: &str = "KNOCK_PORTS";

/// Most knock ports one program watches.
pub const KNOCK_PORTS_MAX: u32 = 16;

/// `PerCpuArray<u64>` indexed by [`crate::counters::Counter`]: how many frames got each verdict.
pub const COUNTERS: &str = "COUNTERS";

/// Name of the XDP program inside the object file.
pub const XDP_PROGRAM: &str = "capyknock";
