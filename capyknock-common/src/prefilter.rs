//! The knock pre-filter: one verdict per frame, shared by the XDP program and the userspace
//! capture modes (libpcap and UDP socket), so every mode rejects exactly the same junk.
//!
//! The checks, cheapest first, each with its own [`Counter`]:
//!
//! 1. UDP to a knock port? If not, the frame passes untouched ([`Counter::NotKnock`]); every
//!    other verdict drops the frame. Nothing but header fields is read before this answer: no
//!    clock, no hash-map lookup, not even the source address, so traffic that passes costs
//!    next to nothing.
//! 2. Well formed: not an IP fragment, UDP length agreeing with the IP length, frame long enough.
//! 3. Exactly [`KNOCK_LEN`] bytes of payload.
//! 4. Magic, version and reserved bytes ([`wire::check_prefix`], on the first 8 bytes before the
//!    whole header is read).
//! 5. A known user id, with a time step within one of the current step.
//! 6. The tag: SipHash-2-4 of the header under the user's tag key ([`wire::header_tag`]).
//! 7. Not a tag seen recently (duplicates and replays), then the rate limits: the user's own
//!    bucket, that user's bucket for the source address, the global bucket; and finally room in
//!    the ring buffer (or userspace queue).
//!
//! The rate limits come in that order so that a key holder can only spend their own share
//! (docs/SECURITY.md, "A user who attacks the others"): valid-tag junk made with one user's key
//! empties that user's bucket and stops there, so it never reaches the global bucket beyond the
//! user's rate, and never touches the source buckets of other users, even when forged from
//! their addresses (the source bucket is per user and source).
//!
//! The tag is remembered only once a candidate passed the rate limits, and forgotten again if it
//! could not be delivered, so a client's retransmission gets another chance while a replay of a
//! delivered knock costs nothing. Everything that differs between kernel and userspace (maps,
//! clock, ring buffer) is behind the [`Env`] trait.

#![expect(
    clippy::inline_always,
    reason = "the XDP program calls these; BPF has no real function calls for them to go through"
)]

use core::net::IpAddr;

use crate::{
    counters::Counter,
    frame::{Frame, UdpDatagram, parse_udp_at, parse_udp_to},
    maps::{SourceKey, Tag, TagKey, UserId},
    wire::{self, HEADER_LEN, Header, KNOCK_LEN, PREFIX_LEN},
};

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Source address.
    pub addr: IpAddr,
    /// Source port.
    pub port: u16,
}

/// The state the pre-filter consults and updates: maps in the kernel, plain collections in
/// userspace.
pub trait Env {
    /// Whether `port` (host byte order) is a knock port.
    fn is_knock_port(&self, port: u16) -> bool;
    /// The tag key of `user`, if it is a known user.
    fn tag_key(&self, user: &UserId) -> Option<TagKey>;
    /// The current TOTP time step.
    fn time_step(&self) -> u64;
    /// Whether `tag` was delivered recently.
    fn seen(&self, tag: &Tag) -> bool;
    /// Records `tag` as delivered; `false` if it was already there (another CPU won the race).
    fn remember(&mut self, tag: &Tag) -> bool;
    /// Removes `tag` again (its knock could not be delivered).
    fn forget(&mut self, tag: &Tag);
    /// Takes a token from the bucket of `user`; `false` if it is empty.
    fn allow_user(&mut self, user: &UserId) -> bool;
    /// Takes a token from the bucket of `key` (a source and a user); `false` if it is empty.
    fn allow_source(&mut self, key: &SourceKey) -> bool;
    /// Takes a token from the global bucket; `false` if it is empty.
    fn allow_global(&mut self) -> bool;
    /// Hands the [`KNOCK_LEN`] bytes at `offset` of `frame` to userspace; `false` if there is no
    /// room.
    fn deliver<F: Frame + ?Sized>(&mut self, frame: &F, offset: usize, src: &Source) -> bool;
}

/// The verdict for one Ethernet frame.
#[inline(always)]
pub fn check_frame<F: Frame + ?Sized, E: Env>(frame: &F, env: &mut E) -> Counter {
    let udp = parse_udp_to(frame, |port| env.is_knock_port(port));
    check_udp(frame, udp, env)
}

/// The verdict for a packet with no Ethernet header, its IP header at `l3` and `ethertype`
/// naming the IP version (see [`parse_udp_at`]): libpcap's raw IP and loopback link types,
/// Windows raw sockets. The checks are those of [`check_frame`].
#[inline(always)]
pub fn check_packet<F: Frame + ?Sized, E: Env>(
    frame: &F,
    ethertype: u16,
    l3: usize,
    env: &mut E,
) -> Counter {
    let udp = parse_udp_at(frame, ethertype, l3, |port| env.is_knock_port(port));
    check_udp(frame, udp, env)
}

/// The checks after parsing: a datagram to a knock port, or `None` for anything else.
#[inline(always)]
fn check_udp<F: Frame + ?Sized, E: Env>(
    frame: &F,
    udp: Option<UdpDatagram>,
    env: &mut E,
) -> Counter {
    let Some(udp) = udp else {
        return Counter::NotKnock;
    };
    if udp.fragment || !udp.length_consistent {
        return Counter::Malformed;
    }
    let Some(addr) = udp.source(frame) else {
        return Counter::Malformed;
    };
    let src = Source {
        addr,
        port: udp.src_port,
    };
    check_payload(frame, udp.payload_offset, udp.payload_len, &src, env)
}

/// The verdict for a UDP payload of `len` bytes starting at `offset` of `frame`, already known to
/// be addressed to a knock port (UDP socket mode calls this with the received datagram and
/// `offset` 0).
#[inline(always)]
pub fn check_payload<F: Frame + ?Sized, E: Env>(
    frame: &F,
    offset: usize,
    len: usize,
    src: &Source,
    env: &mut E,
) -> Counter {
    if len != KNOCK_LEN {
        return Counter::WrongSize;
    }
    match offset.checked_add(KNOCK_LEN) {
        Some(end) if end <= frame.len() => {}
        _ => return Counter::Malformed,
    }
    // The first 8 bytes alone turn away most junk, before the whole header is copied.
    let Some(prefix) = frame.load::<PREFIX_LEN>(offset) else {
        return Counter::Malformed;
    };
    if wire::check_prefix(&prefix).is_err() {
        return Counter::BadHeader;
    }
    let Some(header) = frame.load::<HEADER_LEN>(offset) else {
        return Counter::Malformed;
    };
    let Ok(parsed) = Header::parse(&header) else {
        return Counter::BadHeader;
    };
    let Some(key) = env.tag_key(&parsed.user_id) else {
        return Counter::UnknownUser;
    };
    if parsed.time_step.abs_diff(env.time_step()) > wire::STEP_SKEW {
        return Counter::StaleStep;
    }
    let expected = wire::header_tag(&key, &wire::tagged_part(&header));
    // One 64-bit comparison: the time taken does not depend on how many bytes match.
    if u64::from_ne_bytes(expected) != u64::from_ne_bytes(parsed.tag) {
        return Counter::BadTag;
    }
    let tag = parsed.tag;
    if env.seen(&tag) {
        return Counter::Duplicate;
    }
    if !env.allow_user(&parsed.user_id) {
        return Counter::RateLimitedUser;
    }
    if !env.allow_source(&source_key(&src.addr, &parsed.user_id)) {
        return Counter::RateLimitedSource;
    }
    if !env.allow_global() {
        return Counter::RateLimitedGlobal;
    }
    if !env.remember(&tag) {
        return Counter::Duplicate;
    }
    if !env.deliver(frame, offset, src) {
        env.forget(&tag);
        return Counter::RingFull;
    }
    Counter::Delivered
}

/// The rate-limit key of a source for one user: the source first (IPv4 addresses as
/// IPv4-mapped IPv6, IPv6 addresses cut to their /64, as one subscriber usually owns a whole
/// /64), then the user id. Keyed per user, so junk made with one user's key and forged from
/// another user's address cannot empty that other user's bucket.
#[inline(always)]
#[must_use]
pub fn source_key(addr: &IpAddr, user: &UserId) -> SourceKey {
    let source = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => {
            let mut prefix = v6.octets();
            if let Some(interface_id) = prefix.get_mut(8..) {
                interface_id.fill(0);
            }
            prefix
        }
    };
    let mut key = [0u8; 32];
    for (k, b) in key.iter_mut().zip(source.iter().chain(user.iter())) {
        *k = *b;
    }
    key
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};
    use std::{collections::HashSet, vec::Vec};

    use super::*;
    use crate::{
        maps::Config,
        ratelimit::{self, RateLimit},
        wire::{TAG_LEN, TAG_OFFSET, USER_ID_OFFSET},
    };

    const PORT: u16 = 62201;
    const USER: UserId = [0x11; 16];
    const KEY: TagKey = [0x22; 16];
    const OTHER_USER: UserId = [0x33; 16];
    const OTHER_KEY: TagKey = [0x44; 16];
    const STEP: u64 = 58_000_000;

    /// A plain in-memory environment, like the userspace one but unbounded.
    #[derive(Default)]
    struct TestEnv {
        step: u64,
        tags: HashSet<Tag>,
        sources: std::collections::HashMap<SourceKey, u64>,
        users: std::collections::HashMap<UserId, u64>,
        global: u64,
        config: Config,
        now: u64,
        room: usize,
        delivered: Vec<(Source, [u8; KNOCK_LEN])>,
    }

    impl TestEnv {
        fn new() -> Self {
            Self {
                step: STEP,
                room: usize::MAX,
                now: 1_000_000_000,
                ..Self::default()
            }
        }
    }

    impl Env for TestEnv {
        fn is_knock_port(&self, port: u16) -> bool {
            port == PORT
        }
        fn tag_key(&self, user: &UserId) -> Option<TagKey> {
            if *user == USER {
                Some(KEY)
            } else if *user == OTHER_USER {
                Some(OTHER_KEY)
            } else {
                None
            }
        }
        fn allow_user(&mut self, user: &UserId) -> bool {
            let tat = self.users.entry(*user).or_insert(0);
            ratelimit::allow(tat, self.now, &self.config.per_user)
        }
        fn time_step(&self) -> u64 {
            self.step
        }
        fn seen(&self, tag: &Tag) -> bool {
            self.tags.contains(tag)
        }
        fn remember(&mut self, tag: &Tag) -> bool {
            self.tags.insert(*tag)
        }
        fn forget(&mut self, tag: &Tag) {
            self.tags.remove(tag);
        }
        fn allow_source(&mut self, key: &SourceKey) -> bool {
            let tat = self.sources.entry(*key).or_insert(0);
            ratelimit::allow(tat, self.now, &self.config.per_source)
        }
        fn allow_global(&mut self) -> bool {
            ratelimit::allow(&mut self.global, self.now, &self.config.global)
        }
        fn deliver<F: Frame + ?Sized>(&mut self, frame: &F, offset: usize, src: &Source) -> bool {
            if self.delivered.len() >= self.room {
                return false;
            }
            self.delivered.push((*src, frame.load(offset).unwrap()));
            true
        }
    }

    fn knock(step: u64, nonce: u8) -> [u8; KNOCK_LEN] {
        let header = Header::sealed(&KEY, USER, step, [nonce; wire::NONCE_LEN]).to_bytes();
        let mut k = [0x5a; KNOCK_LEN];
        k[..HEADER_LEN].copy_from_slice(&header);
        k
    }

    fn src4() -> Source {
        Source {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            port: 40000,
        }
    }

    fn check(env: &mut TestEnv, payload: &[u8]) -> Counter {
        check_payload(payload, 0, payload.len(), &src4(), env)
    }

    #[test]
    fn a_valid_knock_is_delivered_once() {
        let mut env = TestEnv::new();
        let k = knock(STEP, 1);
        assert_eq!(check(&mut env, &k), Counter::Delivered);
        assert_eq!(env.delivered.len(), 1);
        assert_eq!(env.delivered[0].1, k);
        assert_eq!(check(&mut env, &k), Counter::Duplicate);
        assert_eq!(check(&mut env, &knock(STEP, 2)), Counter::Delivered);
    }

    #[test]
    fn size_header_user_step_tag() {
        let mut env = TestEnv::new();
        let k = knock(STEP, 1);
        assert_eq!(check(&mut env, &k[..255]), Counter::WrongSize);
        assert_eq!(check(&mut env, &[0u8; 257]), Counter::WrongSize);
        assert_eq!(check(&mut env, &[]), Counter::WrongSize);
        assert_eq!(check(&mut env, &[0u8; KNOCK_LEN]), Counter::BadHeader);
        let mut bad = k;
        bad[4] = 2;
        assert_eq!(check(&mut env, &bad), Counter::BadHeader);
        let mut bad = k;
        bad[USER_ID_OFFSET] ^= 1;
        assert_eq!(check(&mut env, &bad), Counter::UnknownUser);
        for step in [STEP - 1, STEP + 1] {
            assert_eq!(check(&mut env, &knock(step, 3)), Counter::Delivered);
        }
        for step in [STEP - 2, STEP + 2, 0, u64::MAX] {
            assert_eq!(check(&mut env, &knock(step, 3)), Counter::StaleStep);
        }
        for i in 0..TAG_LEN {
            let mut bad = k;
            bad[TAG_OFFSET + i] ^= 0x80;
            assert_eq!(check(&mut env, &bad), Counter::BadTag);
        }
        // The body is not covered by the tag: a changed body is still a duplicate of the header.
        assert_eq!(check(&mut env, &k), Counter::Delivered);
        let mut other_body = k;
        other_body[200] ^= 1;
        assert_eq!(check(&mut env, &other_body), Counter::Duplicate);
    }

    #[test]
    fn every_header_bit_flip_is_rejected() {
        let k = knock(STEP, 9);
        for bit in 0..HEADER_LEN * 8 {
            let mut env = TestEnv::new();
            let mut bad = k;
            bad[bit / 8] ^= 1 << (bit % 8);
            let verdict = check(&mut env, &bad);
            assert_ne!(verdict, Counter::Delivered, "bit {bit}");
        }
    }

    #[test]
    fn rate_limits_and_ring_full() {
        let mut env = TestEnv::new();
        env.config.per_user = RateLimit::new(1, 3);
        assert_eq!(check(&mut env, &knock(STEP, 1)), Counter::Delivered);
        assert_eq!(check(&mut env, &knock(STEP, 2)), Counter::Delivered);
        assert_eq!(check(&mut env, &knock(STEP, 3)), Counter::Delivered);
        assert_eq!(check(&mut env, &knock(STEP, 4)), Counter::RateLimitedUser);
        assert_eq!(
            check_payload(&other_knock(1)[..], 0, KNOCK_LEN, &src4(), &mut env),
            Counter::Delivered,
            "another user has a bucket of their own"
        );

        let mut env = TestEnv::new();
        env.config.per_source = RateLimit::new(1, 2);
        assert_eq!(check(&mut env, &knock(STEP, 1)), Counter::Delivered);
        assert_eq!(check(&mut env, &knock(STEP, 2)), Counter::Delivered);
        assert_eq!(check(&mut env, &knock(STEP, 3)), Counter::RateLimitedSource);
        // A rate-limited knock was not remembered: it may come again later.
        env.now += 10_000_000_000;
        assert_eq!(check(&mut env, &knock(STEP, 3)), Counter::Delivered);

        let mut env = TestEnv::new();
        env.config.global = RateLimit::new(1, 1);
        assert_eq!(check(&mut env, &knock(STEP, 1)), Counter::Delivered);
        let other = Source {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: 1,
        };
        let k2 = knock(STEP, 2);
        assert_eq!(
            check_payload(&k2[..], 0, KNOCK_LEN, &other, &mut env),
            Counter::RateLimitedGlobal
        );

        let mut env = TestEnv::new();
        env.room = 0;
        let k = knock(STEP, 1);
        assert_eq!(check(&mut env, &k), Counter::RingFull);
        env.room = 1;
        assert_eq!(
            check(&mut env, &k),
            Counter::Delivered,
            "forgotten after ring full"
        );
    }

    #[test]
    fn payload_must_be_inside_the_frame() {
        let mut env = TestEnv::new();
        let k = knock(STEP, 1);
        assert_eq!(
            check_payload(&k[..200], 0, KNOCK_LEN, &src4(), &mut env),
            Counter::Malformed
        );
        assert_eq!(
            check_payload(&k[..], usize::MAX, KNOCK_LEN, &src4(), &mut env),
            Counter::Malformed
        );
    }

    #[test]
    fn source_keys() {
        let v4 = source_key(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), &USER);
        assert_eq!(
            v4[..16],
            Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets()
        );
        assert_eq!(v4[16..], USER);
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let key = |a: Ipv6Addr| source_key(&IpAddr::V6(a), &USER);
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        // Per user: the same address, another user, another bucket.
        assert_ne!(
            source_key(&IpAddr::V6(a), &USER),
            source_key(&IpAddr::V6(a), &OTHER_USER)
        );
        // An IPv6 /64 key never equals an IPv4 key: /64 keys end in eight zero bytes, mapped
        // IPv4 keys have 0xffff in bytes 10 and 11.
        assert_ne!(
            source_key(&IpAddr::V6("::ffff:1.2.3.4".parse().unwrap()), &USER),
            source_key(&IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), &USER)
        );
    }

    fn other_knock(nonce: u8) -> [u8; KNOCK_LEN] {
        let header =
            Header::sealed(&OTHER_KEY, OTHER_USER, STEP, [nonce; wire::NONCE_LEN]).to_bytes();
        let mut k = [0x5a; KNOCK_LEN];
        k[..HEADER_LEN].copy_from_slice(&header);
        k
    }

    #[test]
    fn one_users_flood_stops_at_that_users_bucket() {
        let mut env = TestEnv::new();
        env.config.per_user = RateLimit::new(10, 20);
        env.config.per_source = RateLimit::new(10, 20);
        env.config.global = RateLimit::new(100, 100);
        // User A's key holder floods valid-tag junk from many forged sources, including the
        // victim's address.
        let victim = Source {
            addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
            port: 1,
        };
        let mut verdicts = std::collections::BTreeMap::new();
        for i in 0..5000u32 {
            let header = Header::sealed(&KEY, USER, STEP, {
                let mut n = [0u8; wire::NONCE_LEN];
                n[..4].copy_from_slice(&i.to_le_bytes());
                n
            })
            .to_bytes();
            let mut k = [0u8; KNOCK_LEN];
            k[..HEADER_LEN].copy_from_slice(&header);
            let src = if i % 2 == 0 {
                victim
            } else {
                Source {
                    addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                    port: 2,
                }
            };
            let v = check_payload(&k[..], 0, KNOCK_LEN, &src, &mut env);
            *verdicts.entry(v).or_insert(0u32) += 1;
        }
        assert_eq!(verdicts.get(&Counter::Delivered), Some(&20), "{verdicts:?}");
        assert_eq!(
            verdicts.get(&Counter::RateLimitedUser),
            Some(&4980),
            "{verdicts:?}"
        );
        // User B still gets in, from the victim's address too.
        for n in 0..10 {
            assert_eq!(
                check_payload(&other_knock(n)[..], 0, KNOCK_LEN, &victim, &mut env),
                Counter::Delivered,
                "knock {n} of the other user"
            );
        }
    }
    proptest::proptest! {
        #[test]
        fn never_panics_on_frames(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut env = TestEnv::new();
            let v = check_frame(bytes.as_slice(), &mut env);
            proptest::prop_assert_ne!(v, Counter::Delivered);
        }

        #[test]
        fn never_panics_on_packets_without_ethernet(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            v6 in proptest::bool::ANY,
            l3 in 0usize..64,
        ) {
            let mut env = TestEnv::new();
            let ethertype = if v6 { crate::frame::ETH_P_IPV6 } else { crate::frame::ETH_P_IPV4 };
            let v = check_packet(bytes.as_slice(), ethertype, l3, &mut env);
            proptest::prop_assert_ne!(v, Counter::Delivered);
        }

        #[test]
        fn random_payloads_are_never_delivered(bytes in proptest::collection::vec(proptest::num::u8::ANY, KNOCK_LEN)) {
            let mut env = TestEnv::new();
            proptest::prop_assert_ne!(check(&mut env, &bytes), Counter::Delivered);
        }
    }
}
