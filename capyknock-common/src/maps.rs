//! Names, sizes and value types of the BPF maps shared between the XDP program and its userspace
//! loader.
//!
//! The loader looks maps up by these names; a rename on one side without the other fails loudly
//! at load time (map not found) instead of silently. Value types are `#[repr(C)]` with explicit
//! padding, so both sides agree on every byte; the `user` feature adds their `aya::Pod` impls.

use crate::{
    ratelimit::RateLimit,
    wire::{KNOCK_LEN, TAG_KEY_LEN, TAG_LEN, USER_ID_LEN},
};

/// Name of the XDP program inside the object file.
pub const XDP_PROGRAM: &str = "capyknock";
/// Name of the empty XDP program (passes every frame at once) in the same object: the floor
/// `cargo xtask bench-xdp` measures the real program against. The daemon never loads it.
pub const XDP_PASS_PROGRAM: &str = "capyknock_pass";
/// Name of the same pre-filter as a tc ingress program (`xdp_mode = "tc"`, and what `"auto"`
/// attaches to a veth), sharing every map with [`XDP_PROGRAM`].
pub const TC_PROGRAM: &str = "capyknock_tc";
/// Name of the empty tc program: the floor of [`TC_PROGRAM`] for benchmarks.
pub const TC_PASS_PROGRAM: &str = "capyknock_tc_pass";

/// `Array<u64>` of [`KNOCK_PORT_WORDS`] words: a bitmap of the UDP destination ports that are
/// knock ports (bit `port % 64` of word `port / 64`, [`knock_port_bit`]). An array lookup is
/// inlined by the verifier, so every UDP frame learns whether it goes to a knock port with two
/// loads and no helper call.
pub const KNOCK_PORTS: &str = "KNOCK_PORTS";
/// Words in the knock-port bitmap: one bit for each of the 65536 ports.
pub const KNOCK_PORT_WORDS: u32 = 65536 / 64;
/// Most knock ports one program watches (a configuration limit; the bitmap holds any number).
pub const KNOCK_PORTS_MAX: u32 = 16;

/// The word index and bit mask of `port` in the [`KNOCK_PORTS`] bitmap.
#[inline(always)]
#[must_use]
pub const fn knock_port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1 << (port % 64))
}

/// `HashMap<[u8; 16], [u8; 16]>`: user id -> that user's pre-filter tag key.
pub const USERS: &str = "USERS";
/// Most users the kernel pre-filter knows.
pub const USERS_MAX: u32 = 4096;

/// `Array<u64>` of one element: the current TOTP time step, written by userspace every step.
pub const TIME_STEP: &str = "TIME_STEP";

/// `LruHashMap<[u8; 8], u8>`: tags of recently delivered knocks (value unused).
pub const RECENT_TAGS: &str = "RECENT_TAGS";
/// Size of the recent-tags LRU. Three time steps of knocks at the default global rate fit.
pub const RECENT_TAGS_MAX: u32 = 16384;

/// `LruHashMap<[u8; 32], Bucket>`: per-source rate-limit state of each user, keyed by
/// [`crate::prefilter::source_key`] (source address or /64, and user id).
pub const SOURCE_BUCKETS: &str = "SOURCE_BUCKETS";
/// Size of the per-source bucket LRU.
pub const SOURCE_BUCKETS_MAX: u32 = 16384;

/// `LruHashMap<[u8; 16], Bucket>`: per-user rate-limit state, keyed by user id. Only packets
/// with a valid tag reach it, so only known users have entries, and it is as large as the
/// users map: nobody can evict a user's bucket (which would refill it).
pub const USER_BUCKETS: &str = "USER_BUCKETS";

/// `Array<Bucket>` of one element: the global rate-limit state.
pub const GLOBAL_BUCKET: &str = "GLOBAL_BUCKET";

/// `Array<Config>` of one element: rate limits, written by userspace.
pub const CONFIG: &str = "CONFIG";

/// `PerCpuArray<u64>` indexed by [`crate::counters::Counter`]: how many frames got each verdict.
pub const COUNTERS: &str = "COUNTERS";

/// `RingBuf` of [`KnockEvent`]s: candidates for userspace.
pub const EVENTS: &str = "EVENTS";
/// Ring buffer size in bytes (a power-of-two multiple of the page size): about 900 events.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// A user id as carried in the knock header.
pub type UserId = [u8; USER_ID_LEN];
/// A per-user pre-filter tag key.
pub type TagKey = [u8; TAG_KEY_LEN];
/// A pre-filter tag.
pub type Tag = [u8; TAG_LEN];
/// A per-source rate-limit key: the source (an IPv4-mapped IPv6 address, or an IPv6 /64 prefix
/// with the interface identifier zeroed) followed by the user id.
pub type SourceKey = [u8; 32];

/// Rate-limit state: the GCRA theoretical arrival time (see [`crate::ratelimit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Bucket {
    /// Theoretical arrival time, nanoseconds on the program's monotonic clock.
    pub tat_ns: u64,
}

/// Pre-filter configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Config {
    /// Limit per source address (IPv4) or /64 (IPv6), for each user apart.
    pub per_source: RateLimit,
    /// Limit over all sources together.
    pub global: RateLimit,
    /// Limit per user (checked first: one key spends only its own share).
    pub per_user: RateLimit,
}

/// `KnockEvent::family` for IPv4 (the address is IPv4-mapped).
pub const FAMILY_V4: u8 = 4;
/// `KnockEvent::family` for IPv6.
pub const FAMILY_V6: u8 = 6;

/// One candidate knock in the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct KnockEvent {
    /// Source address: IPv6, or IPv4-mapped IPv6 (`::ffff:a.b.c.d`) when `family` is 4.
    pub src_addr: [u8; 16],
    /// Interface index the frame arrived on.
    pub ifindex: u32,
    /// UDP source port, host byte order.
    pub src_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub pad: u8,
    /// The whole UDP payload: exactly one knock.
    pub bytes: [u8; KNOCK_LEN],
}

impl KnockEvent {
    /// Size of an event in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Reads an event from ring-buffer bytes; `None` unless exactly [`Self::SIZE`] bytes with a
    /// known family.
    #[must_use]
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::SIZE {
            return None;
        }
        let src_addr: [u8; 16] = b.get(0..16)?.try_into().ok()?;
        let ifindex = u32::from_ne_bytes(b.get(16..20)?.try_into().ok()?);
        let src_port = u16::from_ne_bytes(b.get(20..22)?.try_into().ok()?);
        let family = *b.get(22)?;
        let bytes: [u8; KNOCK_LEN] = b.get(24..24 + KNOCK_LEN)?.try_into().ok()?;
        if family != FAMILY_V4 && family != FAMILY_V6 {
            return None;
        }
        Some(Self {
            src_addr,
            ifindex,
            src_port,
            family,
            pad: 0,
            bytes,
        })
    }
}

const _: () = assert!(KnockEvent::SIZE == 24 + KNOCK_LEN);
const _: () = assert!(core::mem::size_of::<Config>() == 48);
const _: () = assert!(core::mem::size_of::<Bucket>() == 8);

#[cfg(all(feature = "user", target_os = "linux"))]
#[allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: the impls promise plain old data"
)]
mod pod {
    // SAFETY: `#[repr(C)]` structs of integers and byte arrays with no implicit padding
    // (checked by the size assertions above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::KnockEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_bytes() {
        let mut raw = std::vec![0u8; KnockEvent::SIZE];
        raw[..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]);
        raw[16..20].copy_from_slice(&7u32.to_ne_bytes());
        raw[20..22].copy_from_slice(&40000u16.to_ne_bytes());
        raw[22] = FAMILY_V4;
        raw[24] = 0xAB;
        let ev = KnockEvent::from_bytes(&raw).unwrap();
        assert_eq!(ev.ifindex, 7);
        assert_eq!(ev.src_port, 40000);
        assert_eq!(ev.bytes[0], 0xAB);
        assert_eq!(ev.src_addr[15], 7);
    }

    #[test]
    fn event_rejects_wrong_size_and_family() {
        let mut raw = std::vec![0u8; KnockEvent::SIZE];
        assert!(KnockEvent::from_bytes(&raw).is_none(), "family 0");
        raw[22] = FAMILY_V6;
        assert!(KnockEvent::from_bytes(&raw).is_some());
        assert!(KnockEvent::from_bytes(&raw[1..]).is_none());
        raw.push(0);
        assert!(KnockEvent::from_bytes(&raw).is_none());
    }
}
