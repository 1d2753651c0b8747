//! Packet capture: where knock candidates come from. XDP (Linux), with libpcap and plain UDP
//! socket fallbacks behind the same interface.

#[cfg(target_os = "linux")]
pub mod xdp;
