//! The capyknock XDP program.
//!
//! Sees every frame on the interface before the network stack. UDP to a knock port (the
//! `KNOCK_PORTS` map, filled by userspace) is dropped here, so no socket and no ICMP error ever
//! answers a knock or a scan; everything else passes untouched. Each verdict is counted in the
//! per-CPU `COUNTERS` map. The parsing logic lives in `capyknock-common::frame`, shared with (and
//! tested in) userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use capyknock_common::{
    counters::Counter,
    frame::{Frame, classify},
    maps::KNOCK_PORTS_MAX,
};

/// Knock ports, host byte order -> 1.
#[map(name = "KNOCK_PORTS")]
static KNOCK_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(KNOCK_PORTS_MAX, 0);

/// Verdict counters, indexed by `Counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Bounds-checked reads straight from the packet buffer.
struct XdpFrame<'a>(&'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + N > end {
            return None;
        }
        // SAFETY: the check above proves [start + offset, start + offset + N) lies inside the
        // packet buffer, which the kernel keeps valid for the whole program run; the read is
        // unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

#[xdp]
pub fn capyknock(ctx: XdpContext) -> u32 {
    // SAFETY: map lookups return a reference the kernel keeps valid during this run; we only
    // test for presence.
    let verdict = classify(&XdpFrame(&ctx), |port| unsafe {
        KNOCK_PORTS.get(&port).is_some()
    });
    count(verdict);
    match verdict {
        Counter::KnockDropped => xdp_action::XDP_DROP,
        Counter::NotKnock => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for this run and not
        // shared with other CPUs; preemption is off while an XDP program runs.
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
