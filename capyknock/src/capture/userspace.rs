//! The userspace copy of the pre-filter state, for the pcap, raw socket (Windows) and UDP
//! socket modes.
//!
//! The verdict logic is `capyknock_common::prefilter`, the very function the XDP program runs;
//! this module only supplies its [`Env`]: plain collections standing in for the kernel maps,
//! bounded like them (LRU caches of the same sizes), and a monotonic clock.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use capyknock_common::{
    counters::Counter,
    frame::Frame,
    maps::{
        Config, RECENT_TAGS_MAX, SOURCE_BUCKETS_MAX, SourceKey, Tag, TagKey, USERS_MAX, UserId,
    },
    prefilter::{self, Env, Source},
    ratelimit,
};
use lru::LruCache;

use super::{Candidate, PrefilterCounters, link_layer::LinkLayer};

/// Pre-filter state shared between a capture thread or task and the [`super::Capture`] owner.
#[derive(Debug, Clone)]
pub struct SharedPrefilter(Arc<Mutex<UserPrefilter>>);

impl SharedPrefilter {
    /// Wraps `prefilter` for sharing.
    #[must_use]
    pub fn new(prefilter: UserPrefilter) -> Self {
        Self(Arc::new(Mutex::new(prefilter)))
    }

    /// Locks the state. A panic while holding the lock cannot leave it inconsistent in a way
    /// that matters (at worst one counter or bucket is stale), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, UserPrefilter> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The userspace pre-filter: the same verdicts as the XDP program, from the same function.
pub struct UserPrefilter {
    knock_ports: Vec<u16>,
    users: HashMap<UserId, TagKey>,
    time_step: u64,
    recent: LruCache<Tag, ()>,
    sources: LruCache<SourceKey, u64>,
    user_buckets: LruCache<UserId, u64>,
    global: u64,
    config: Config,
    counters: PrefilterCounters,
    epoch: Instant,
}

impl fmt::Debug for UserPrefilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tag keys are secrets: only say how many users there are.
        f.debug_struct("UserPrefilter")
            .field("knock_ports", &self.knock_ports)
            .field("users", &self.users.len())
            .field("time_step", &self.time_step)
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn capacity(n: u32) -> NonZeroUsize {
    NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN)
}

impl UserPrefilter {
    /// A pre-filter for `knock_ports` with the given rate limits, no users and time step 0.
    #[must_use]
    pub fn new(knock_ports: &[u16], config: Config) -> Self {
        Self {
            knock_ports: knock_ports.to_vec(),
            users: HashMap::new(),
            time_step: 0,
            recent: LruCache::new(capacity(RECENT_TAGS_MAX)),
            sources: LruCache::new(capacity(SOURCE_BUCKETS_MAX)),
            user_buckets: LruCache::new(capacity(USERS_MAX)),
            global: 0,
            config,
            counters: PrefilterCounters::default(),
            epoch: Instant::now(),
        }
    }

    /// Replaces the known users.
    pub fn set_users(&mut self, users: &[(UserId, TagKey)]) {
        self.users = users.iter().copied().collect();
    }

    /// Sets the current time step.
    pub fn set_time_step(&mut self, step: u64) {
        self.time_step = step;
    }

    /// Replaces the rate limits.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// The verdict counters so far.
    #[must_use]
    pub fn counters(&self) -> PrefilterCounters {
        self.counters
    }

    /// Nanoseconds on this pre-filter's monotonic clock.
    #[must_use]
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Judges one Ethernet frame (pcap mode) at time `now_ns`. A candidate goes to `sink`, which
    /// returns `false` when it has no room.
    pub fn check_frame(
        &mut self,
        frame: &[u8],
        ifindex: Option<u32>,
        now_ns: u64,
        sink: &mut dyn FnMut(Candidate) -> bool,
    ) -> Counter {
        let mut env = UserEnv {
            state: self,
            now_ns,
            ifindex,
            sink,
        };
        let verdict = prefilter::check_frame(frame, &mut env);
        self.counters.bump(verdict);
        verdict
    }

    /// Judges one captured frame whose link layer is `link` (pcap on any interface, a Windows
    /// raw socket): Ethernet frames as [`Self::check_frame`] does, the others from their IP
    /// header on. The same checks and counters either way.
    pub fn check_link(
        &mut self,
        link: LinkLayer,
        frame: &[u8],
        ifindex: Option<u32>,
        now_ns: u64,
        sink: &mut dyn FnMut(Candidate) -> bool,
    ) -> Counter {
        if link == LinkLayer::Ethernet {
            return self.check_frame(frame, ifindex, now_ns, sink);
        }
        let verdict = match link.ip_start(frame) {
            Some((ethertype, l3)) => {
                let mut env = UserEnv {
                    state: self,
                    now_ns,
                    ifindex,
                    sink,
                };
                prefilter::check_packet(frame, ethertype, l3, &mut env)
            }
            None => Counter::NotKnock,
        };
        self.counters.bump(verdict);
        verdict
    }

    /// Judges one UDP datagram received on a knock port (UDP socket mode) at time `now_ns`.
    pub fn check_datagram(
        &mut self,
        payload: &[u8],
        src: SocketAddr,
        now_ns: u64,
        sink: &mut dyn FnMut(Candidate) -> bool,
    ) -> Counter {
        let source = Source {
            addr: src.ip().to_canonical(),
            port: src.port(),
        };
        let mut env = UserEnv {
            state: self,
            now_ns,
            ifindex: None,
            sink,
        };
        let verdict = prefilter::check_payload(payload, 0, payload.len(), &source, &mut env);
        self.counters.bump(verdict);
        verdict
    }

    /// Counts a verdict reached outside the pre-filter (a datagram the OS reported as too big).
    pub fn count(&mut self, verdict: Counter) {
        self.counters.bump(verdict);
    }
}

struct UserEnv<'a, 'b> {
    state: &'a mut UserPrefilter,
    now_ns: u64,
    ifindex: Option<u32>,
    sink: &'b mut dyn FnMut(Candidate) -> bool,
}

impl Env for UserEnv<'_, '_> {
    fn is_knock_port(&self, port: u16) -> bool {
        self.state.knock_ports.contains(&port)
    }

    fn tag_key(&self, user: &UserId) -> Option<TagKey> {
        self.state.users.get(user).copied()
    }

    fn time_step(&self) -> u64 {
        self.state.time_step
    }

    fn seen(&self, tag: &Tag) -> bool {
        self.state.recent.contains(tag)
    }

    fn remember(&mut self, tag: &Tag) -> bool {
        self.state.recent.put(*tag, ()).is_none()
    }

    fn forget(&mut self, tag: &Tag) {
        self.state.recent.pop(tag);
    }

    fn allow_user(&mut self, user: &UserId) -> bool {
        let limit = self.state.config.per_user;
        if limit.is_unlimited() {
            return true;
        }
        let tat = self.state.user_buckets.get_or_insert_mut(*user, || 0);
        ratelimit::allow(tat, self.now_ns, &limit)
    }

    fn allow_source(&mut self, key: &SourceKey) -> bool {
        let limit = self.state.config.per_source;
        if limit.is_unlimited() {
            return true;
        }
        let tat = self.state.sources.get_or_insert_mut(*key, || 0);
        ratelimit::allow(tat, self.now_ns, &limit)
    }

    fn allow_global(&mut self) -> bool {
        ratelimit::allow(
            &mut self.state.global,
            self.now_ns,
            &self.state.config.global,
        )
    }

    fn deliver<F: Frame + ?Sized>(&mut self, frame: &F, offset: usize, src: &Source) -> bool {
        let Some(bytes) = frame.load(offset) else {
            return false;
        };
        (self.sink)(Candidate {
            src: SocketAddr::new(src.addr, src.port),
            ifindex: self.ifindex,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use capyknock_common::{
        ratelimit::RateLimit,
        wire::{HEADER_LEN, Header, KNOCK_LEN, NONCE_LEN},
    };

    use super::*;

    const USER: UserId = [1; 16];
    const KEY: TagKey = [2; 16];

    fn knock(step: u64, nonce: u8) -> [u8; KNOCK_LEN] {
        let mut k = [0u8; KNOCK_LEN];
        k[..HEADER_LEN]
            .copy_from_slice(&Header::sealed(&KEY, USER, step, [nonce; NONCE_LEN]).to_bytes());
        k
    }

    fn prefilter() -> UserPrefilter {
        let mut p = UserPrefilter::new(&[62201], Config::default());
        p.set_users(&[(USER, KEY)]);
        p.set_time_step(100);
        p
    }

    #[test]
    fn datagrams_are_judged_and_counted() {
        let mut p = prefilter();
        let mut got = Vec::new();
        let mut sink = |c: Candidate| {
            got.push(c);
            true
        };
        let src: SocketAddr = "[::ffff:192.0.2.7]:40000".parse().unwrap();
        let k = knock(100, 1);
        assert_eq!(p.check_datagram(&k, src, 0, &mut sink), Counter::Delivered);
        assert_eq!(p.check_datagram(&k, src, 0, &mut sink), Counter::Duplicate);
        assert_eq!(
            p.check_datagram(&k[..10], src, 0, &mut sink),
            Counter::WrongSize
        );
        assert_eq!(
            p.check_datagram(&knock(98, 2), src, 0, &mut sink),
            Counter::StaleStep
        );
        p.set_users(&[]);
        assert_eq!(
            p.check_datagram(&knock(100, 3), src, 0, &mut sink),
            Counter::UnknownUser
        );
        assert_eq!(got.len(), 1);
        // The IPv4-mapped address of a dual-stack socket is reported as plain IPv4.
        assert_eq!(got[0].src, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(got[0].bytes, k);
        assert_eq!(got[0].ifindex, None);
        let c = p.counters();
        assert_eq!(c.get(Counter::Delivered), 1);
        assert_eq!(c.get(Counter::Duplicate), 1);
        assert_eq!(c.get(Counter::WrongSize), 1);
    }

    #[test]
    fn full_sink_counts_ring_full_and_allows_a_retry() {
        let mut p = prefilter();
        let src: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let k = knock(100, 1);
        assert_eq!(
            p.check_datagram(&k, src, 0, &mut |_| false),
            Counter::RingFull
        );
        assert_eq!(
            p.check_datagram(&k, src, 0, &mut |_| true),
            Counter::Delivered
        );
    }

    #[test]
    fn per_source_limit_uses_the_clock_given() {
        let mut p = prefilter();
        p.set_config(Config {
            per_source: RateLimit::new(1, 1),
            ..Config::default()
        });
        let src: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let other: SocketAddr = "192.0.2.8:1".parse().unwrap();
        let t = 5_000_000_000;
        let mut ok = |_| true;
        assert_eq!(
            p.check_datagram(&knock(100, 1), src, t, &mut ok),
            Counter::Delivered
        );
        assert_eq!(
            p.check_datagram(&knock(100, 2), src, t, &mut ok),
            Counter::RateLimitedSource
        );
        assert_eq!(
            p.check_datagram(&knock(100, 2), other, t, &mut ok),
            Counter::Delivered
        );
        assert_eq!(
            p.check_datagram(&knock(100, 3), src, t + 1_000_000_000, &mut ok),
            Counter::Delivered
        );
    }

    #[test]
    fn debug_does_not_show_keys() {
        let text = format!("{:?}", prefilter());
        assert!(!text.contains("[2, 2"), "{text}");
        assert!(text.contains("users: 1"));
    }
}
