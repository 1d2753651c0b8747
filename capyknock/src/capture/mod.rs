//! Packet capture: where knock candidates come from.
//!
//! [`Capture`] hides which mode runs, so the daemon does not care:
//!
//! - `xdp` (Linux): the XDP program drops every UDP datagram to a knock port before the network
//!   stack sees it and hands only pre-filtered candidates to userspace through a BPF ring buffer
//!   ([`xdp`]).
//! - `pcap` (Linux, macOS, FreeBSD): libpcap with a `udp dst port` filter on the same
//!   interfaces; the userspace copy of the pre-filter decides ([`pcap`]). The stack still sees
//!   the packets, so the firewall must drop the knock port.
//! - `raw` (Windows): raw IPv4 sockets with `SIO_RCVALL` on each local address, no driver
//!   needed, same userspace pre-filter (`raw`); IPv6 knocks through UDP sockets.
//! - `udp` (any OS): a plain UDP socket bound to the knock port(s), same pre-filter ([`udp`]).
//!
//! All of them run the very same pre-filter function (`capyknock_common::prefilter`) and count
//! the same verdicts ([`PrefilterCounters`]). `auto` tries what the platform has, best first
//! ([`AUTO_ORDER`]: xdp, pcap, udp on Linux; pcap, udp on macOS and FreeBSD; raw, udp on
//! Windows), and logs which it chose and why. An interface the config names that does not exist
//! is an error in every mode on Unix (`auto` does not fall through to udp for it).
//!
//! In xdp and pcap modes, [`Capture::next`] also follows the interfaces ([`link_watch`]): one
//! that appears later and matches the config's `interfaces` (every one when empty, names,
//! `prefix*` patterns) is attached to, and one that is removed is forgotten.

pub mod link_layer;
pub mod userspace;

#[cfg(unix)]
pub mod ifaces;
#[cfg(target_os = "linux")]
pub mod link_kind;
#[cfg(target_os = "linux")]
pub mod link_watch;
#[cfg(unix)]
pub mod pcap;
#[cfg(windows)]
pub mod raw;
pub mod udp;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "Winsock and IP Helper calls: SIO_RCVALL, SO_EXCLUSIVEADDRUSE, the address list"
)]
pub mod win_sock;
#[cfg(target_os = "linux")]
#[allow(
    unsafe_code,
    reason = "the eBPF loader registers the ring buffer's fd with tokio"
)]
pub mod xdp;
#[cfg(target_os = "linux")]
pub mod xdp_bench;
#[cfg(target_os = "linux")]
#[allow(
    unsafe_code,
    reason = "registers the aya-log buffer's fd with tokio, as the XDP loader does"
)]
pub mod xdp_log;

use std::{fmt, net::SocketAddr};

use capyknock_common::{
    counters::Counter,
    maps::{Config, TagKey, UserId},
    ratelimit::RateLimit,
    wire::KNOCK_LEN,
};

/// A packet that passed the pre-filter: worth decrypting.
#[derive(Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Where it came from.
    pub src: SocketAddr,
    /// Interface index it arrived on, where the capture mode knows it.
    pub ifindex: Option<u32>,
    /// The whole knock.
    pub bytes: [u8; KNOCK_LEN],
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes are ciphertext and a public header; printing their length is enough.
        f.debug_struct("Candidate")
            .field("src", &self.src)
            .field("ifindex", &self.ifindex)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// How to capture, as asked for on the command line (`--capture`) or in the config
/// (`capture = "..."`); both spell it `auto`, `xdp`, `pcap`, `raw`, `udp`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[strum(serialize_all = "lowercase")]
pub enum CaptureMode {
    /// The best this platform has that works: XDP, else pcap, else a UDP socket (Linux); pcap,
    /// else UDP (macOS, FreeBSD); raw, else UDP (Windows).
    #[default]
    Auto,
    /// The XDP pre-filter (Linux).
    Xdp,
    /// libpcap (Linux, macOS, FreeBSD).
    Pcap,
    /// Raw IPv4 sockets with `SIO_RCVALL` (Windows, as Administrator).
    Raw,
    /// A UDP socket bound to the knock port(s).
    Udp,
}

impl CaptureMode {
    /// Name as written in the config and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How the pre-filter attaches to an interface. The config's `xdp_mode` is an
/// `Option<XdpAttachMode>`: `"auto"` (`None`) tries native XDP and falls back to SKB, except on
/// a veth, where it takes tc ingress (`xdp::auto_prefers_tc` says why).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantNames,
)]
#[strum(serialize_all = "lowercase")]
pub enum XdpAttachMode {
    /// In the driver, before any socket buffer is allocated (fastest).
    Native,
    /// Generic mode in the network stack; works with every driver.
    Skb,
    /// Not XDP: the same pre-filter as a tc ingress program (tcx, Linux 6.6 or later), which
    /// sees the socket buffer as the stack has it, without generic XDP's copy.
    Tc,
}

impl XdpAttachMode {
    /// Name as written in the config (`xdp_mode`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mode a [`Capture`] actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveMode {
    /// XDP pre-filter in the kernel.
    Xdp,
    /// libpcap with the userspace pre-filter.
    Pcap,
    /// Windows raw sockets (`SIO_RCVALL`) with the userspace pre-filter.
    Raw,
    /// UDP socket with the userspace pre-filter.
    Udp,
}

impl ActiveMode {
    /// Lower-case name, as on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Pcap => "pcap",
            Self::Raw => "raw",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rate limit: an average rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Candidates per second on average; 0 means unlimited.
    pub per_second: u32,
    /// Candidates allowed at once after a quiet period.
    pub burst: u32,
}

impl RateLimitConfig {
    fn to_kernel(self) -> RateLimit {
        RateLimit::new(self.per_second, self.burst)
    }
}

/// What to capture, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Which mode to use.
    pub mode: CaptureMode,
    /// Interfaces for xdp and pcap. Empty: every interface that is up, except loopback.
    pub ifaces: Vec<String>,
    /// UDP ports knocks are sent to (at least one, never 0).
    pub knock_ports: Vec<u16>,
    /// Force an XDP attach mode; `None` tries native and falls back to SKB (SKB at once on a
    /// veth).
    pub xdp_mode: Option<XdpAttachMode>,
    /// Limit per source address (IPv6: per /64), for each user apart.
    pub per_source: RateLimitConfig,
    /// Limit over all sources.
    pub global: RateLimitConfig,
    /// Limit per user, checked before the other two: one key spends only its own share.
    pub per_user: RateLimitConfig,
    /// `realtime_priority`: the XDP ring buffer thread runs at `SCHED_FIFO` (xdp mode only;
    /// `server::realtime`). `None`: normal priority.
    pub realtime_priority: Option<crate::server::realtime::RealtimePriority>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Auto,
            ifaces: Vec::new(),
            knock_ports: vec![capyknock_common::wire::DEFAULT_KNOCK_PORT],
            xdp_mode: None,
            // A user knocks a few times a minute; 10/s with bursts of 20 is plenty.
            per_source: RateLimitConfig {
                per_second: 10,
                burst: 20,
            },
            // Candidates carry a valid tag, so this only guards against a leaked tag key.
            global: RateLimitConfig {
                per_second: 10_000,
                burst: 10_000,
            },
            // One user's key holder: the same share as one source (a user knocks a few times
            // a minute), so 1,000 abused keys are needed to fill the global bucket.
            per_user: RateLimitConfig {
                per_second: 10,
                burst: 20,
            },
            realtime_priority: None,
        }
    }
}

impl CaptureConfig {
    /// The rate limits in the form the pre-filter uses.
    #[must_use]
    pub fn prefilter_config(&self) -> Config {
        Config {
            per_source: self.per_source.to_kernel(),
            global: self.global.to_kernel(),
            per_user: self.per_user.to_kernel(),
        }
    }
}

/// Frame counts per verdict, indexed like [`Counter::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefilterCounters(pub [u64; Counter::COUNT as usize]);

impl PrefilterCounters {
    /// The count for one verdict.
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter.index() as usize).copied().unwrap_or(0)
    }

    /// The count for the verdict called `name` (see [`Counter::name`]).
    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<u64> {
        Counter::from_name(name).map(|c| self.get(c))
    }

    /// Adds one to `counter`.
    pub fn bump(&mut self, counter: Counter) {
        if let Some(slot) = self.0.get_mut(counter.index() as usize) {
            *slot = slot.saturating_add(1);
        }
    }

    /// Every counter with its name, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }

    /// Frames dropped because they were UDP to a knock port (everything but `not_knock`).
    #[must_use]
    pub fn knock_port_total(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| !c.passes())
            .map(|c| self.get(*c))
            .fold(0, u64::saturating_add)
    }

    /// `self - earlier`, counter by counter (saturating).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0.iter()) {
            *o = o.saturating_sub(*e);
        }
        out
    }
}

impl fmt::Display for PrefilterCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// Why capture could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The config lists no knock port, or port 0.
    #[error("no usable knock port configured (need at least one, 1-65535)")]
    NoKnockPorts,
    /// The mode does not exist on this operating system.
    #[error("{mode} capture is only available on {platforms}; use --capture udp")]
    Unsupported {
        /// The mode asked for.
        mode: &'static str,
        /// Where it exists.
        platforms: &'static str,
    },
    /// XDP could not be used.
    #[cfg(target_os = "linux")]
    #[error("XDP capture unavailable")]
    Xdp(#[source] xdp::XdpError),
    /// libpcap could not be used.
    #[cfg(unix)]
    #[error("pcap capture unavailable")]
    Pcap(#[source] pcap::PcapError),
    /// The raw sockets could not be used.
    #[cfg(windows)]
    #[error("raw socket capture unavailable")]
    Raw(#[source] raw::RawError),
    /// The UDP socket could not be used.
    #[error("UDP socket capture unavailable")]
    Udp(#[source] udp::UdpError),
    /// The capture threads or tasks ended.
    #[error("capture stopped")]
    Closed,
    /// A named interface is unusable.
    #[cfg(unix)]
    #[error(transparent)]
    Iface(#[from] ifaces::IfaceError),
}

/// One interface capture runs on, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Interface name (as when attached); for raw capture, the address the socket is bound to.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// The XDP attach mode in use (xdp capture only).
    pub xdp_mode: Option<XdpAttachMode>,
}

/// Knock candidates from whichever mode runs. Dropping it stops capturing (and detaches XDP).
#[derive(Debug)]
pub struct Capture {
    backend: Backend,
    /// Interfaces coming and going (xdp and pcap modes); `None` when not followed.
    #[cfg(target_os = "linux")]
    follow: Option<(link_watch::LinkWatch, link_watch::IfaceSelector)>,
}

#[derive(Debug)]
enum Backend {
    #[cfg(target_os = "linux")]
    Xdp(Box<xdp::XdpCapture>),
    #[cfg(unix)]
    Pcap(pcap::PcapCapture),
    #[cfg(windows)]
    Raw(raw::RawCapture),
    Udp(udp::UdpCapture),
}

impl Capture {
    /// Starts capturing as `config` says. Must be called from inside a tokio runtime (it
    /// registers sockets and spawns tasks there).
    pub fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        if config.knock_ports.is_empty() || config.knock_ports.contains(&0) {
            return Err(CaptureError::NoKnockPorts);
        }
        // Before any mode: `auto` must not fall through to a UDP socket on every interface
        // because of a typo in an interface name.
        #[cfg(unix)]
        ifaces::check_named(&config.ifaces)?;
        let backend = match config.mode {
            CaptureMode::Auto => open_auto(config)?,
            mode => open_mode(config, mode)?,
        };
        #[cfg(target_os = "linux")]
        let follow = if matches!(backend, Backend::Udp(_)) {
            None
        } else {
            match link_watch::LinkWatch::start() {
                Ok(watch) => Some((watch, link_watch::IfaceSelector::new(&config.ifaces))),
                Err(err) => {
                    tracing::warn!(
                        error = %ErrorChain(&err),
                        "interfaces that appear later will not be captured on"
                    );
                    None
                }
            }
        };
        let capture = Self {
            backend,
            #[cfg(target_os = "linux")]
            follow,
        };
        tracing::info!(
            mode = %capture.mode(),
            knock_ports = %crate::ports::knock_ports_text(&config.knock_ports),
            interfaces = %capture
                .interfaces()
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            "capture started"
        );
        Ok(capture)
    }

    /// The interfaces capture runs on now (none for udp, whose sockets take every interface).
    #[must_use]
    pub fn interfaces(&self) -> Vec<Attached> {
        match &self.backend {
            #[cfg(target_os = "linux")]
            Backend::Xdp(x) => {
                let modes: Vec<_> = x.filter().attachments().map(|(_, m)| m).collect();
                x.filter()
                    .attached()
                    .into_iter()
                    .zip(modes)
                    .map(|((index, name), mode)| Attached {
                        name,
                        index,
                        xdp_mode: Some(mode),
                    })
                    .collect()
            }
            #[cfg(unix)]
            Backend::Pcap(p) => p
                .attached()
                .into_iter()
                .map(|(index, name)| Attached {
                    name,
                    index,
                    xdp_mode: None,
                })
                .collect(),
            #[cfg(windows)]
            Backend::Raw(r) => r
                .attached()
                .into_iter()
                .map(|(index, name)| Attached {
                    name,
                    index,
                    xdp_mode: None,
                })
                .collect(),
            Backend::Udp(_) => Vec::new(),
        }
    }

    /// The addresses of capture's own UDP sockets on the knock ports: every one in udp mode,
    /// the IPv6 ones in raw mode, none otherwise.
    #[must_use]
    pub fn udp_sockets(&self) -> &[SocketAddr] {
        match &self.backend {
            Backend::Udp(u) => u.local_addrs(),
            #[cfg(windows)]
            Backend::Raw(r) => r.v6_local_addrs(),
            #[cfg(unix)]
            _ => &[],
        }
    }

    /// Whether capture follows interfaces that appear later (xdp and pcap modes).
    #[must_use]
    pub fn follows_interfaces(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.follow.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// The mode that runs.
    #[must_use]
    pub fn mode(&self) -> ActiveMode {
        match self.backend {
            #[cfg(target_os = "linux")]
            Backend::Xdp(_) => ActiveMode::Xdp,
            #[cfg(unix)]
            Backend::Pcap(_) => ActiveMode::Pcap,
            #[cfg(windows)]
            Backend::Raw(_) => ActiveMode::Raw,
            Backend::Udp(_) => ActiveMode::Udp,
        }
    }

    /// The next candidate. Cancel-safe: usable in `tokio::select!`. Meanwhile attaches to
    /// interfaces that appear (xdp and pcap modes).
    pub async fn next(&mut self) -> Result<Candidate, CaptureError> {
        #[cfg(target_os = "linux")]
        while let Some((watch, _)) = &mut self.follow {
            // `biased`: interface changes first, so a new interface is attached to before the
            // next knock is looked at.
            let event = tokio::select! {
                biased;
                event = watch.next() => event,
                candidate = next_of(&mut self.backend) => return candidate,
            };
            if let Some(event) = event {
                self.on_link(&event);
            } else {
                tracing::warn!("interface changes are no longer followed");
                self.follow = None;
            }
        }
        next_of(&mut self.backend).await
    }

    /// Attaches to or forgets the interface of one link event.
    #[cfg(target_os = "linux")]
    fn on_link(&mut self, event: &link_watch::LinkEvent) {
        use link_watch::Action;
        let Some((_, selector)) = &self.follow else {
            return;
        };
        let attached = match &self.backend {
            Backend::Xdp(x) => x.filter().attached(),
            Backend::Pcap(p) => p.attached(),
            Backend::Udp(_) => return,
        };
        match link_watch::decide(selector, &attached, event) {
            Action::Nothing => {}
            Action::Attach { index, name } => {
                let result = match &mut self.backend {
                    Backend::Xdp(x) => x
                        .attach_new(&name, index)
                        .map(XdpAttachMode::as_str)
                        .map_err(|e| ErrorChain(&e).to_string()),
                    Backend::Pcap(p) => p
                        .attach_new(&name, index)
                        .map(|()| "pcap")
                        .map_err(|e| ErrorChain(&e).to_string()),
                    Backend::Udp(_) => return,
                };
                match result {
                    Ok(how) => tracing::info!(
                        iface = %name,
                        ifindex = index,
                        mode = how,
                        "new interface: capture attached"
                    ),
                    Err(error) => tracing::error!(
                        iface = %name,
                        ifindex = index,
                        error = %error,
                        "new interface: cannot capture on it; knocks through it are not seen"
                    ),
                }
            }
            Action::Forget { index, name } => {
                match &mut self.backend {
                    Backend::Xdp(x) => x.filter_mut().forget(index),
                    Backend::Pcap(p) => p.forget(index),
                    Backend::Udp(_) => return,
                }
                tracing::info!(iface = %name, ifindex = index, "interface removed: capture detached");
            }
        }
    }

    /// Replaces the known users: `(user id, tag key)` pairs.
    pub fn set_users(&mut self, users: &[(UserId, TagKey)]) -> Result<(), CaptureError> {
        match &mut self.backend {
            #[cfg(target_os = "linux")]
            Backend::Xdp(x) => x.filter_mut().set_users(users).map_err(CaptureError::Xdp),
            #[cfg(unix)]
            Backend::Pcap(p) => {
                p.prefilter().set_users(users);
                Ok(())
            }
            #[cfg(windows)]
            Backend::Raw(r) => {
                r.prefilter().set_users(users);
                Ok(())
            }
            Backend::Udp(u) => {
                u.prefilter().set_users(users);
                Ok(())
            }
        }
    }

    /// Sets the current TOTP time step (call at least once per step).
    pub fn set_time_step(&mut self, step: u64) -> Result<(), CaptureError> {
        match &mut self.backend {
            #[cfg(target_os = "linux")]
            Backend::Xdp(x) => x
                .filter_mut()
                .set_time_step(step)
                .map_err(CaptureError::Xdp),
            #[cfg(unix)]
            Backend::Pcap(p) => {
                p.prefilter().set_time_step(step);
                Ok(())
            }
            #[cfg(windows)]
            Backend::Raw(r) => {
                r.prefilter().set_time_step(step);
                Ok(())
            }
            Backend::Udp(u) => {
                u.prefilter().set_time_step(step);
                Ok(())
            }
        }
    }

    /// The verdict counters so far.
    pub fn counters(&self) -> Result<PrefilterCounters, CaptureError> {
        match &self.backend {
            #[cfg(target_os = "linux")]
            Backend::Xdp(x) => x.filter().counters().map_err(CaptureError::Xdp),
            #[cfg(unix)]
            Backend::Pcap(p) => Ok(p.prefilter().counters()),
            #[cfg(windows)]
            Backend::Raw(r) => Ok(r.prefilter().counters()),
            Backend::Udp(u) => Ok(u.prefilter().counters()),
        }
    }

    /// Stops capturing and detaches from the interfaces (what dropping does, with a log line).
    pub fn shutdown(self) {
        tracing::info!(mode = %self.mode(), "capture stopped");
        drop(self);
    }
}

/// The next candidate of whichever backend runs. Cancel-safe.
async fn next_of(backend: &mut Backend) -> Result<Candidate, CaptureError> {
    match backend {
        #[cfg(target_os = "linux")]
        Backend::Xdp(x) => x.next().await.map_err(CaptureError::Xdp),
        #[cfg(unix)]
        Backend::Pcap(p) => p.next().await.ok_or(CaptureError::Closed),
        #[cfg(windows)]
        Backend::Raw(r) => r.next().await.ok_or(CaptureError::Closed),
        Backend::Udp(u) => u.next().await.ok_or(CaptureError::Closed),
    }
}

/// What `auto` tries, best first; the last is taken if all before it fail (its error is the
/// error of `auto`).
#[cfg(target_os = "linux")]
pub const AUTO_ORDER: &[CaptureMode] = &[CaptureMode::Xdp, CaptureMode::Pcap, CaptureMode::Udp];
/// What `auto` tries, best first (macOS, FreeBSD and other Unixes: no XDP).
#[cfg(all(unix, not(target_os = "linux")))]
pub const AUTO_ORDER: &[CaptureMode] = &[CaptureMode::Pcap, CaptureMode::Udp];
/// What `auto` tries, best first (Windows).
#[cfg(windows)]
pub const AUTO_ORDER: &[CaptureMode] = &[CaptureMode::Raw, CaptureMode::Udp];

/// Opens the backend of one mode (not `auto`).
fn open_mode(config: &CaptureConfig, mode: CaptureMode) -> Result<Backend, CaptureError> {
    match mode {
        CaptureMode::Xdp => open_xdp(config),
        CaptureMode::Pcap => open_pcap(config),
        CaptureMode::Raw => open_raw(config),
        CaptureMode::Udp | CaptureMode::Auto => open_udp(config),
    }
}

#[cfg(target_os = "linux")]
fn open_xdp(config: &CaptureConfig) -> Result<Backend, CaptureError> {
    xdp::XdpCapture::open(config)
        .map(|x| Backend::Xdp(Box::new(x)))
        .map_err(CaptureError::Xdp)
}

#[cfg(not(target_os = "linux"))]
fn open_xdp(_config: &CaptureConfig) -> Result<Backend, CaptureError> {
    Err(CaptureError::Unsupported {
        mode: "xdp",
        platforms: "Linux",
    })
}

#[cfg(unix)]
fn open_pcap(config: &CaptureConfig) -> Result<Backend, CaptureError> {
    pcap::PcapCapture::open(config)
        .map(Backend::Pcap)
        .map_err(CaptureError::Pcap)
}

#[cfg(not(unix))]
fn open_pcap(_config: &CaptureConfig) -> Result<Backend, CaptureError> {
    Err(CaptureError::Unsupported {
        mode: "pcap",
        platforms: "Linux, macOS and FreeBSD (on Windows use raw)",
    })
}

#[cfg(windows)]
fn open_raw(config: &CaptureConfig) -> Result<Backend, CaptureError> {
    raw::RawCapture::open(config)
        .map(Backend::Raw)
        .map_err(CaptureError::Raw)
}

#[cfg(not(windows))]
fn open_raw(_config: &CaptureConfig) -> Result<Backend, CaptureError> {
    Err(CaptureError::Unsupported {
        mode: "raw",
        platforms: "Windows (on Unix use pcap)",
    })
}

fn open_udp(config: &CaptureConfig) -> Result<Backend, CaptureError> {
    udp::UdpCapture::open(config)
        .map(Backend::Udp)
        .map_err(CaptureError::Udp)
}

/// What the log says about a mode `auto` took.
fn auto_note(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Pcap => " (the firewall must drop the knock port)",
        CaptureMode::Raw => " (IPv4 through raw sockets, IPv6 through a udp socket)",
        CaptureMode::Udp => " (a socket listens on the knock port)",
        CaptureMode::Xdp | CaptureMode::Auto => "",
    }
}

fn open_auto(config: &CaptureConfig) -> Result<Backend, CaptureError> {
    let mut passed_over: Vec<&'static str> = Vec::new();
    let mut modes = AUTO_ORDER.iter().copied().peekable();
    while let Some(mode) = modes.next() {
        let Some(&next) = modes.peek() else {
            // The last resort: its error is the error of `auto`.
            let backend = open_mode(config, mode)?;
            log_auto_choice(mode, &passed_over);
            return Ok(backend);
        };
        match open_mode(config, mode) {
            Ok(backend) => {
                log_auto_choice(mode, &passed_over);
                return Ok(backend);
            }
            Err(err) => {
                tracing::warn!(
                    reason = %ErrorChain(&err),
                    "capture auto: {} unavailable, trying {}",
                    mode.as_str(),
                    if next == CaptureMode::Udp { "a udp socket" } else { next.as_str() },
                );
                passed_over.push(mode.as_str());
            }
        }
    }
    // AUTO_ORDER is never empty; udp is the answer if it were.
    open_udp(config)
}

fn log_auto_choice(mode: CaptureMode, passed_over: &[&'static str]) {
    let what = if mode == CaptureMode::Udp {
        "a udp socket"
    } else {
        mode.as_str()
    };
    tracing::info!(
        mode = mode.as_str(),
        unavailable = %passed_over.join(","),
        "capture auto: using {what}{}",
        auto_note(mode)
    );
}

pub use crate::error_chain::ErrorChain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_name_and_display() {
        let mut c = PrefilterCounters::default();
        c.bump(Counter::BadTag);
        c.bump(Counter::BadTag);
        c.bump(Counter::NotKnock);
        assert_eq!(c.by_name("bad_tag"), Some(2));
        assert_eq!(c.by_name("nope"), None);
        assert_eq!(c.knock_port_total(), 2);
        let text = c.to_string();
        assert!(text.starts_with("not_knock=1 malformed=0"), "{text}");
        assert!(text.contains("bad_tag=2"));
        let later = {
            let mut l = c;
            l.bump(Counter::Delivered);
            l
        };
        assert_eq!(later.since(&c).get(Counter::Delivered), 1);
        assert_eq!(later.since(&c).get(Counter::BadTag), 0);
    }

    #[test]
    fn default_config_is_limited_and_valid() {
        let c = CaptureConfig::default();
        let k = c.prefilter_config();
        assert!(!k.per_source.is_unlimited());
        assert!(!k.global.is_unlimited());
        assert!(!k.per_user.is_unlimited());
        assert_eq!(k.per_source.interval_ns, 100_000_000);
        assert_eq!(k.per_user.interval_ns, 100_000_000);
    }

    #[test]
    fn candidate_debug_hides_bytes() {
        let c = Candidate {
            src: "192.0.2.7:40000".parse().unwrap(),
            ifindex: Some(3),
            bytes: [0xAB; KNOCK_LEN],
        };
        let text = format!("{c:?}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("192.0.2.7:40000"));
    }

    #[tokio::test]
    async fn no_knock_port_is_an_error() {
        let config = CaptureConfig {
            mode: CaptureMode::Udp,
            knock_ports: vec![],
            ..CaptureConfig::default()
        };
        assert!(matches!(
            Capture::open(&config),
            Err(CaptureError::NoKnockPorts)
        ));
    }
}
