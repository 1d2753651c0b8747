//! The capyknock XDP program, and the same pre-filter as a tc ingress program.
//!
//! The XDP program (`capyknock`) sees every frame on the interface before the network stack.
//! The tc program (`capyknock_tc`) runs the same code on the socket buffer at tc ingress; the
//! daemon attaches it to veths, where XDP slows the traffic it passes (`xdp::auto_prefers_tc`
//! in the daemon). Both read the frame through the [`Hook`] trait and share every map.
//!
//! UDP to a knock port (the `KNOCK_PORTS` map, filled by userspace) is always dropped here, so
//! no socket and no ICMP error ever answers a knock or a scan; everything else passes untouched.
//! Among the dropped frames, only those the pre-filter (`capyknock_common::prefilter`, shared
//! with and tested in userspace) accepts are copied into the `EVENTS` ring buffer for the
//! daemon: right size and header, known user, current time step, valid tag, not a recent
//! duplicate, within the rate limits. Each verdict is counted in the per-CPU `COUNTERS` map.
//! Nothing is logged per packet: aya-log records only rare events (the ring buffer full, a map
//! update that failed, the self-test the daemon runs at start), at most one per second per kind
//! and CPU, from functions of their own that the hot path never enters (`log_event`).
//!
//! Cheap early exits (docs/PERFORMANCE.md has the figures): until a frame is known to be UDP to
//! a knock port the program reads header fields straight from the packet and one word of the
//! knock-port bitmap (an array lookup, which the verifier inlines); it reads the clock only when
//! a rate limit needs it, after a valid tag.
#![no_std]
#![no_main]
#![allow(
    unsafe_code,
    reason = "the XDP program is one foreign interface: packet memory, maps and helpers are raw \
              pointers and kernel calls"
)]
#![expect(
    clippy::inline_always,
    reason = "BPF has no real function calls for these to go through"
)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use capyknock_common::{
    counters::Counter,
    frame::Frame,
    maps::{
        Bucket, Config, EVENTS_BYTES, FAMILY_V4, FAMILY_V6, KNOCK_PORT_WORDS, KnockEvent,
        RECENT_TAGS_MAX, SOURCE_BUCKETS_MAX, SourceKey, Tag, TagKey, USERS_MAX, UserId,
        knock_port_bit,
    },
    prefilter::{self, Env, Source},
    ratelimit::{self, RateLimit},
    wire::KNOCK_LEN,
};

/// Knock ports: a bitmap over the 65536 ports (`maps::knock_port_bit`).
#[map(name = "KNOCK_PORTS")]
static KNOCK_PORTS: Array<u64> = Array::with_max_entries(KNOCK_PORT_WORDS, 0);

/// User id -> tag key.
#[map(name = "USERS")]
static USERS: HashMap<UserId, TagKey> = HashMap::with_max_entries(USERS_MAX, 0);

/// The current time step (index 0).
#[map(name = "TIME_STEP")]
static TIME_STEP: Array<u64> = Array::with_max_entries(1, 0);

/// Tags of recently delivered knocks.
#[map(name = "RECENT_TAGS")]
static RECENT_TAGS: LruHashMap<Tag, u8> = LruHashMap::with_max_entries(RECENT_TAGS_MAX, 0);

/// Per-source rate-limit buckets.
#[map(name = "SOURCE_BUCKETS")]
static SOURCE_BUCKETS: LruHashMap<SourceKey, Bucket> =
    LruHashMap::with_max_entries(SOURCE_BUCKETS_MAX, 0);

/// Per-user rate-limit buckets.
#[map(name = "USER_BUCKETS")]
static USER_BUCKETS: LruHashMap<UserId, Bucket> = LruHashMap::with_max_entries(USERS_MAX, 0);

/// The global rate-limit bucket (index 0).
#[map(name = "GLOBAL_BUCKET")]
static GLOBAL_BUCKET: Array<Bucket> = Array::with_max_entries(1, 0);

/// Rate limits (index 0); all zero (unlimited) until userspace writes it.
#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Verdict counters, indexed by `Counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Candidates for userspace.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per CPU and [`LogEvent`]: the earliest time (ns) its next record may be written.
#[map(name = "LOG_GATE")]
static LOG_GATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(LogEvent::COUNT, 0);

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
/// `TCX_NEXT` (also `TC_ACT_UNSPEC`): leave the frame to the next tc program, else pass it.
const TCX_NEXT: i32 = -1;
/// `TC_ACT_SHOT`: drop the frame.
const TC_ACT_SHOT: i32 = 2;
/// `-EEXIST`: the key was there already (another CPU won a race).
const EEXIST: i64 = -17;
/// The interface index of loopback in every network namespace; `BPF_PROG_TEST_RUN` without a
/// context runs the program as if the frame came in on it.
const LOOPBACK_IFINDEX: u32 = 1;
/// Nanoseconds between two records of one kind on one CPU.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// The rare events the program writes a log record for.
#[derive(Clone, Copy)]
#[repr(u32)]
enum LogEvent {
    /// A candidate found the ring buffer full (the daemon is behind).
    RingFull = 0,
    /// Inserting into a map failed (other than "already there").
    MapUpdate = 1,
    /// The self-test frame the daemon runs through the program at start.
    SelfTest = 2,
}

impl LogEvent {
    const COUNT: u32 = 3;
}

/// Whether a record of `event` may be written now (at most one per second per CPU), and if so
/// takes the turn.
#[inline(always)]
fn log_turn(event: LogEvent, now: u64) -> bool {
    match LOG_GATE.get_ptr_mut(event as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for this run; preemption is off.
        Some(next) => unsafe {
            if now < *next {
                return false;
            }
            *next = now.saturating_add(LOG_INTERVAL_NS);
            true
        },
        None => false,
    }
}

/// Writes the record of `event` (`code`: the error code of a failed map update). A function of
/// its own, so the hot path only ever holds a call to it, never the record's code.
#[inline(never)]
fn log_event(event: LogEvent, code: i64) {
    match event {
        LogEvent::RingFull => aya_log_ebpf::warn!(
            &(),
            "ring buffer full: a knock candidate was dropped (the daemon is behind); the client's \
             retransmission may still get through"
        ),
        LogEvent::MapUpdate => {
            aya_log_ebpf::warn!(&(), "a BPF map update failed with error {}", code);
        }
        LogEvent::SelfTest => aya_log_ebpf::info!(
            &(),
            "self-test: the XDP program runs and its log records reach the daemon"
        ),
    }
}

/// What the pre-filter needs of the hook a frame came in through: XDP (the frame before any
/// socket buffer) or tc ingress (the socket buffer, for veths: see `capyknock_tc`).
trait Hook {
    /// Start of the directly readable bytes (the whole frame in XDP, the linear part in tc).
    fn data(&self) -> usize;
    /// End of the directly readable bytes.
    fn data_end(&self) -> usize;
    /// The frame's full length (in tc also the bytes in page fragments).
    fn frame_len(&self) -> usize;
    /// Copies `len` bytes at `offset` into `to` with the hook's helper; 0 on success.
    ///
    /// # Safety
    /// `to` must be valid for `len` bytes of writes.
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64;
    /// The index of the interface the frame came in on.
    fn ifindex(&self) -> u32;
}

impl Hook for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the caller guarantees `to`; the helper checks the packet bounds itself.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, to, len) }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the program's valid `xdp_md` for this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

impl Hook for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the caller guarantees `to`; the helper checks the packet bounds itself and
        // reads page fragments too.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast_const().cast(), offset, to, len) }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the program's valid `__sk_buff` for this run.
        unsafe { (*self.skb.skb).ifindex }
    }
}

/// A byte array on an 8-byte boundary.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

/// Bounds-checked reads from the packet: direct loads for small fields in the directly readable
/// part, the hook's load-bytes helper for larger blocks (the verifier cannot follow long copies
/// from packet pointers at variable offsets) and for fields beyond the linear part of a socket
/// buffer.
struct PacketFrame<'a, H>(&'a H);

impl<H: Hook> PacketFrame<'_, H> {
    /// The `N` bytes at `offset` through the helper.
    #[inline(always)]
    fn load_with_helper<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // 8-byte aligned, so the 64-bit words of the header (SipHash's input) are read with one
        // load each instead of eight byte loads. Not zeroed first: the helper takes
        // uninitialised memory, and zeroing would cost a byte loop (BPF has no wide memset).
        let mut out = core::mem::MaybeUninit::<Aligned<N>>::uninit();
        // SAFETY: the helper copies at most N bytes into `out`, which is N bytes long.
        let rc = unsafe {
            self.0
                .load_bytes(offset as u32, out.as_mut_ptr().cast(), N as u32)
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: the helper returned 0, so it wrote all N bytes.
        Some(unsafe { out.assume_init() }.0)
    }
}

impl<H: Hook> Frame for PacketFrame<'_, H> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.frame_len()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > capyknock_common::frame::MAX_HEADER_OFFSET {
            return None;
        }
        if N > 8 {
            return self.load_with_helper(offset);
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + N > end {
            // Beyond the directly readable bytes: the end of the frame in XDP, possibly a page
            // fragment of a socket buffer in tc.
            if offset + N > self.0.frame_len() {
                return None;
            }
            return self.load_with_helper(offset);
        }
        // SAFETY: the check above proves [start + offset, start + offset + N) lies inside the
        // packet buffer, which the kernel keeps valid for the whole program run; the read is
        // unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

/// The pre-filter's view of the maps.
struct KernelEnv<'a, H> {
    hook: &'a H,
    /// The clock, read at most once per frame and only when a rate limit asks.
    now_ns: Option<u64>,
}

impl<H: Hook> KernelEnv<'_, H> {
    #[inline(always)]
    fn config(&self) -> Config {
        CONFIG.get(0).copied().unwrap_or_default()
    }

    #[inline(always)]
    fn now(&mut self) -> u64 {
        match self.now_ns {
            Some(now) => now,
            None => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                self.now_ns = Some(now);
                now
            }
        }
    }

    /// Logs `event`, at most once a second per CPU.
    #[inline(always)]
    fn log(&mut self, event: LogEvent, code: i64) {
        let now = self.now();
        if log_turn(event, now) {
            log_event(event, code);
        }
    }

    /// Takes a token from the bucket of `key` in `map` (creating it full), under `limit`.
    #[inline(always)]
    fn allow_keyed<K>(&mut self, map: &LruHashMap<K, Bucket>, key: &K, limit: RateLimit) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        let now = self.now();
        match map.get_ptr_mut(key) {
            // SAFETY: valid map value pointer for this run. Updates from two CPUs for the same
            // key may race; the worst case lets a few extra packets through.
            Some(bucket) => unsafe { ratelimit::allow(&mut (*bucket).tat_ns, now, &limit) },
            None => {
                let mut fresh = Bucket::default();
                let allowed = ratelimit::allow(&mut fresh.tat_ns, now, &limit);
                if let Err(code) = map.insert(key, fresh, 0) {
                    self.log(LogEvent::MapUpdate, i64::from(code));
                }
                allowed
            }
        }
    }
}

impl<H: Hook> Env for KernelEnv<'_, H> {
    #[inline(always)]
    fn is_knock_port(&self, port: u16) -> bool {
        let (word, bit) = knock_port_bit(port);
        KNOCK_PORTS.get(word).is_some_and(|w| w & bit != 0)
    }

    #[inline(always)]
    fn tag_key(&self, user: &UserId) -> Option<TagKey> {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run; a
        // concurrent update from userspace can at worst give a torn key, which fails the tag.
        // Hash map values start 8-byte aligned, so the key is read as two 64-bit words.
        USERS.get_ptr(user).map(|p| unsafe {
            let words = *p.cast::<[u64; 2]>();
            let [a, b] = words.map(u64::to_ne_bytes);
            let mut key = [0u8; 16];
            for (k, v) in key.iter_mut().zip(a.iter().chain(b.iter())) {
                *k = *v;
            }
            key
        })
    }

    #[inline(always)]
    fn time_step(&self) -> u64 {
        TIME_STEP.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn seen(&self, tag: &Tag) -> bool {
        RECENT_TAGS.get_ptr(tag).is_some()
    }

    #[inline(always)]
    fn remember(&mut self, tag: &Tag) -> bool {
        match RECENT_TAGS.insert(tag, 1, BPF_NOEXIST) {
            Ok(()) => true,
            Err(code) => {
                let code = i64::from(code);
                if code != EEXIST {
                    self.log(LogEvent::MapUpdate, code);
                }
                false
            }
        }
    }

    #[inline(always)]
    fn forget(&mut self, tag: &Tag) {
        let _ = RECENT_TAGS.remove(tag);
    }

    #[inline(always)]
    fn allow_user(&mut self, user: &UserId) -> bool {
        let limit = self.config().per_user;
        self.allow_keyed(&USER_BUCKETS, user, limit)
    }

    #[inline(always)]
    fn allow_source(&mut self, key: &SourceKey) -> bool {
        let limit = self.config().per_source;
        self.allow_keyed(&SOURCE_BUCKETS, key, limit)
    }

    #[inline(always)]
    fn allow_global(&mut self) -> bool {
        let limit = self.config().global;
        if limit.is_unlimited() {
            return true;
        }
        let now = self.now();
        match GLOBAL_BUCKET.get_ptr_mut(0) {
            // SAFETY: valid array slot for this run; races between CPUs as above.
            Some(bucket) => unsafe { ratelimit::allow(&mut (*bucket).tat_ns, now, &limit) },
            None => true,
        }
    }

    #[inline(always)]
    fn deliver<F: Frame + ?Sized>(&mut self, _frame: &F, offset: usize, src: &Source) -> bool {
        let Some(mut entry) = EVENTS.reserve::<KnockEvent>(0) else {
            self.log(LogEvent::RingFull, 0);
            return false;
        };
        let event = entry.as_mut_ptr();
        let (family, addr) = match src.addr {
            core::net::IpAddr::V4(v4) => (FAMILY_V4, v4.to_ipv6_mapped().octets()),
            core::net::IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        };
        // SAFETY: `event` points to a reserved ring-buffer slot of size_of::<KnockEvent>()
        // bytes, exclusively ours until submit/discard. Every field is written before submit
        // (the bytes by the helper, which copies exactly KNOCK_LEN bytes into the array).
        unsafe {
            (*event).src_addr = addr;
            (*event).ifindex = self.hook.ifindex();
            (*event).src_port = src.port;
            (*event).family = family;
            (*event).pad = 0;
            let rc = self.hook.load_bytes(
                offset as u32,
                (*event).bytes.as_mut_ptr().cast(),
                KNOCK_LEN as u32,
            );
            if rc != 0 {
                // Cannot happen: the pre-filter checked the frame holds these bytes.
                entry.discard(0);
                return false;
            }
        }
        entry.submit(0);
        true
    }
}

/// Runs the pre-filter on the frame `hook` holds and counts its verdict.
#[inline(always)]
fn filter<H: Hook>(hook: &H) -> (Counter, KernelEnv<'_, H>) {
    let mut env = KernelEnv { hook, now_ns: None };
    let verdict = prefilter::check_frame(&PacketFrame(hook), &mut env);
    count(verdict);
    (verdict, env)
}

#[xdp]
pub fn capyknock(ctx: XdpContext) -> u32 {
    let (verdict, mut env) = filter(&ctx);
    // The daemon's self-test (`XdpFilter::self_test`): a malformed datagram to a knock port
    // (a first fragment) run with BPF_PROG_TEST_RUN, which presents it as arriving on loopback.
    // Checked only on this rare rejection path, never for traffic that passes or for junk.
    if verdict == Counter::Malformed && ctx.ifindex() == LOOPBACK_IFINDEX {
        env.log(LogEvent::SelfTest, 0);
    }
    if verdict.passes() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The same pre-filter at tc ingress (tcx), which the daemon attaches to veths instead of XDP:
/// there XDP runs only in generic mode, which copies every non-linear segment (bulk TCP)
/// before any program runs, or in driver mode, which turns off the peer's GSO. At tc ingress
/// the program sees the socket buffer as it is. Passing frames go on to the next tc program
/// (`TCX_NEXT`); the rest are dropped (`TC_ACT_SHOT`).
#[classifier]
pub fn capyknock_tc(ctx: TcContext) -> i32 {
    let (verdict, _) = filter(&ctx);
    if verdict.passes() {
        TCX_NEXT
    } else {
        TC_ACT_SHOT
    }
}

/// The physical floor for `cargo xtask bench-xdp`: an XDP program that passes every frame at
/// once, measured the same way as [`capyknock`]. It uses no map and is never attached by the
/// daemon; it only shares the object file, so it comes out of the same build.
#[xdp]
pub fn capyknock_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor of [`capyknock_tc`]: a tc program that passes every frame at once.
#[classifier]
pub fn capyknock_tc_pass(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for this run and not
        // shared with other CPUs; migration is off while a BPF program runs, and the XDP and
        // tc programs never interrupt each other (both run in softirq context).
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
