//! The daemon's metrics: what the optional OpenMetrics endpoint (`metrics_listen`) shows, kept
//! in a `prometheus-client` registry.
//!
//! [`Metrics`] is a cheap handle (an `Arc`) the core and the worker update:
//! - the pre-filter's verdict counters (kernel per-CPU map or userspace), copied into atomics by
//!   the core once a second ([`Metrics::set_prefilter`]) and rendered from them at each scrape,
//!   so a scrape never touches the capture or the packet path;
//! - the verifier's outcomes, counted by the core as it decides (one atomic add each, no lock);
//! - grants the firewall applied, the knock-to-firewall latency, bans, firewall errors, counted
//!   by the worker thread.
//!
//! The label lists are derived from `Counter::ALL` and `RejectReason::ALL`, so a new verdict or
//! reason shows up here without a change. [`Listen`] is the parsed `metrics_listen` setting;
//! [`http`] serves the registry.

use std::{
    fmt,
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use capyknock_common::counters::Counter as Verdict;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        info::Info,
    },
    registry::Registry,
};

use crate::{capture::PrefilterCounters, protocol::verify::RejectReason};

#[cfg(unix)]
pub mod http;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of `capyknock_knock_to_firewall_seconds`: 100 µs to 2.5 s. A knock normally
/// takes one 64-byte write and one netlink batch (under a millisecond); the top buckets catch a
/// slow disk (a knock flushes when the background flush fell behind) or an exec backend.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One label pair, as the registry's families key their series.
type Label = [(&'static str, &'static str); 1];

/// The handle the daemon updates; clones share the same metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    prefilter: Arc<PrefilterSnapshot>,
    accepted: Counter,
    /// One per reason, in `RejectReason::ALL` order (made at start so counting takes no lock).
    rejected: Vec<Counter>,
    granted: Counter,
    latency: Histogram,
    bans: Counter,
    bans_active: Gauge,
    grants_active: Gauge,
    firewall_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("capyknock");
        registry.register(
            "build",
            "capyknock version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let prefilter = Arc::new(PrefilterSnapshot::default());
        registry.register_collector(Box::new(Arc::clone(&prefilter)));

        let accepted = Counter::default();
        registry.register(
            "knocks_accepted",
            "Knocks the verifier accepted (their grants go to the firewall)",
            accepted.clone(),
        );
        let rejected_family = Family::<Label, Counter>::default();
        let rejected = RejectReason::ALL
            .iter()
            .map(|r| rejected_family.get_or_create_owned(&[("reason", r.name())]))
            .collect();
        registry.register(
            "knocks_rejected",
            "Knocks the daemon refused after the pre-filter, by reason (the names of the log lines)",
            rejected_family,
        );
        let granted = Counter::default();
        registry.register(
            "grants",
            "Knocks whose ports the firewall opened",
            granted.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "knock_to_firewall_seconds",
            "From the daemon taking a knock off the capture (ring buffer or socket) to the \
             firewall having applied its grant (replay record fsync'd and firewall batch done)",
            latency.clone(),
        );
        let grants_active = Gauge::default();
        registry.register(
            "grants_active",
            "Port grants open in the firewall (one per address and port)",
            grants_active.clone(),
        );
        let bans = Counter::default();
        registry.register("bans", "Bans applied since start", bans.clone());
        let bans_active = Gauge::default();
        registry.register("bans_active", "Addresses banned now", bans_active.clone());
        let firewall_errors = Counter::default();
        registry.register(
            "firewall_errors",
            "Firewall operations that failed (grants, bans, repairs)",
            firewall_errors.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                prefilter,
                accepted,
                rejected,
                granted,
                latency,
                bans,
                bans_active,
                grants_active,
                firewall_errors,
            }),
        }
    }

    /// Replaces the pre-filter counters with a newer reading.
    pub fn set_prefilter(&self, counters: &PrefilterCounters) {
        for (slot, verdict) in self.inner.prefilter.0.iter().zip(Verdict::ALL) {
            slot.store(counters.get(*verdict), Ordering::Relaxed);
        }
    }

    /// One knock accepted by the verifier.
    pub fn accepted(&self) {
        self.inner.accepted.inc();
    }

    /// One knock refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL.iter().position(|r| *r == reason);
        if let Some(counter) = index.and_then(|i| self.inner.rejected.get(i)) {
            counter.inc();
        }
    }

    /// A knock's ports were opened, `latency` after the daemon took it off the capture.
    pub fn granted(&self, latency: Duration) {
        self.inner.granted.inc();
        self.inner.latency.observe(latency.as_secs_f64());
    }

    /// A ban was applied.
    pub fn banned(&self) {
        self.inner.bans.inc();
    }

    /// The number of bans in force.
    pub fn set_bans_active(&self, n: usize) {
        self.inner
            .bans_active
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The number of port grants in the firewall.
    pub fn set_grants_active(&self, n: usize) {
        self.inner
            .grants_active
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The worker's running total of firewall errors.
    pub fn set_firewall_errors(&self, total: u64) {
        let counter = &self.inner.firewall_errors;
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and every metric's encoder only writes.
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            tracing::error!("cannot render the metrics");
        }
        out
    }
}

/// The pre-filter counters as last read, rendered at each scrape.
#[derive(Debug, Default)]
struct PrefilterSnapshot([AtomicU64; Verdict::COUNT as usize]);

impl Collector for PrefilterSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let ring_full = self
            .0
            .get(Verdict::RingFull.index() as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed));
        let drops = ConstCounter::new(ring_full);
        let metric = encoder.encode_descriptor(
            "ring_buffer_drops",
            "Valid-looking knocks the pre-filter could not hand to the daemon: the ring buffer \
             (or userspace queue) was full",
            None,
            drops.metric_type(),
        )?;
        drops.encode(metric)?;

        let mut metric = encoder.encode_descriptor(
            "prefilter_frames",
            "Frames judged by the pre-filter (XDP program or userspace), by verdict; updated \
             every second",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (slot, verdict) in self.0.iter().zip(Verdict::ALL) {
            let label: Label = [("verdict", verdict.name())];
            let series = metric.encode_family(&label)?;
            ConstCounter::new(slot.load(Ordering::Relaxed)).encode(series)?;
        }
        Ok(())
    }
}

/// Where the metrics endpoint listens (`metrics_listen`): a loopback address or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `127.0.0.1:9184`, `[::1]:9184`: any address in 127.0.0.0/8, or `::1`.
    Tcp(SocketAddr),
    /// `unix:/run/capyknock/metrics.sock`.
    Unix(PathBuf),
}

/// Why a `metrics_listen` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// Neither `unix:PATH` nor `ADDRESS:PORT`.
    #[error(
        "metrics_listen {0:?} is not an address: write \"127.0.0.1:9184\", \"[::1]:9184\" or \
         \"unix:/run/capyknock/metrics.sock\""
    )]
    Syntax(String),
    /// Not a loopback address.
    #[error(
        "metrics_listen {0} is not a loopback address: the endpoint listens only on 127.0.0.0/8, \
         ::1 or a Unix socket (\"unix:/run/capyknock/metrics.sock\"); to scrape from another \
         machine, put a TLS proxy or an SSH tunnel in front of it"
    )]
    NotLoopback(SocketAddr),
    /// Port 0.
    #[error("metrics_listen {0} has port 0: pick a port, e.g. 9184")]
    PortZero(SocketAddr),
    /// `unix:` with a relative path.
    #[error(
        "metrics_listen unix:{0} must be an absolute path such as unix:/run/capyknock/metrics.sock"
    )]
    Relative(String),
    /// `unix:` with a path too long for `sun_path`.
    #[error("metrics_listen unix:{0} is too long for a Unix socket: keep it under 100 bytes")]
    TooLong(String),
}

impl FromStr for Listen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(ListenError::Relative(path.to_owned()));
            }
            // sun_path is 108 bytes including the NUL; the bind goes through a longer temp name.
            if path.len() > 90 {
                return Err(ListenError::TooLong(path.to_owned()));
            }
            return Ok(Self::Unix(p));
        }
        let addr: SocketAddr = s.parse().map_err(|_| ListenError::Syntax(s.to_owned()))?;
        if !addr.ip().is_loopback() {
            return Err(ListenError::NotLoopback(addr));
        }
        if addr.port() == 0 {
            return Err(ListenError::PortZero(addr));
        }
        Ok(Self::Tcp(addr))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name` (with its labels, as written) in `text`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_counter_and_reason_is_rendered_at_zero() {
        let text = Metrics::new().render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for v in Verdict::ALL {
            let series = format!(
                "capyknock_prefilter_frames_total{{verdict=\"{}\"}}",
                v.name()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for r in RejectReason::ALL {
            let series = format!("capyknock_knocks_rejected_total{{reason=\"{}\"}}", r.name());
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for series in [
            "capyknock_knocks_accepted_total",
            "capyknock_grants_total",
            "capyknock_bans_total",
            "capyknock_bans_active",
            "capyknock_grants_active",
            "capyknock_firewall_errors_total",
            "capyknock_ring_buffer_drops_total",
            "capyknock_knock_to_firewall_seconds_count",
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert!(
            text.contains("# TYPE capyknock_knock_to_firewall_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "capyknock_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn updates_show_in_the_next_render() {
        let m = Metrics::new();
        let other = m.clone();
        let mut pf = PrefilterCounters::default();
        pf.bump(Verdict::BadTag);
        pf.bump(Verdict::BadTag);
        pf.bump(Verdict::RingFull);
        other.set_prefilter(&pf);
        other.accepted();
        other.rejected(RejectReason::Banned);
        other.rejected(RejectReason::Banned);
        other.granted(Duration::from_millis(3));
        other.banned();
        other.set_bans_active(4);
        other.set_grants_active(2);
        other.set_firewall_errors(3);
        other.set_firewall_errors(2);
        let text = m.render();
        for (series, want) in [
            ("capyknock_prefilter_frames_total{verdict=\"bad_tag\"}", 2.0),
            (
                "capyknock_prefilter_frames_total{verdict=\"ring_full\"}",
                1.0,
            ),
            ("capyknock_ring_buffer_drops_total", 1.0),
            ("capyknock_knocks_accepted_total", 1.0),
            ("capyknock_knocks_rejected_total{reason=\"banned\"}", 2.0),
            ("capyknock_grants_total", 1.0),
            ("capyknock_knock_to_firewall_seconds_count", 1.0),
            ("capyknock_knock_to_firewall_seconds_sum", 0.003),
            (
                "capyknock_knock_to_firewall_seconds_bucket{le=\"0.0025\"}",
                0.0,
            ),
            (
                "capyknock_knock_to_firewall_seconds_bucket{le=\"0.005\"}",
                1.0,
            ),
            ("capyknock_bans_total", 1.0),
            ("capyknock_bans_active", 4.0),
            ("capyknock_grants_active", 2.0),
            ("capyknock_firewall_errors_total", 3.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        // A newer pre-filter reading replaces the old one.
        other.set_prefilter(&PrefilterCounters::default());
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "capyknock_prefilter_frames_total{verdict=\"bad_tag\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn listen_accepts_loopback_and_unix_only() {
        for (text, want) in [
            (
                "127.0.0.1:9184",
                Listen::Tcp("127.0.0.1:9184".parse().unwrap()),
            ),
            ("127.3.2.1:80", Listen::Tcp("127.3.2.1:80".parse().unwrap())),
            ("[::1]:9184", Listen::Tcp("[::1]:9184".parse().unwrap())),
            // A Unix socket path is not absolute on Windows (where there is no endpoint).
            #[cfg(unix)]
            (
                "unix:/run/capyknock/metrics.sock",
                Listen::Unix("/run/capyknock/metrics.sock".into()),
            ),
        ] {
            let got: Listen = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
        }
        for (text, want) in [
            ("0.0.0.0:9184", "not a loopback address"),
            ("192.0.2.1:9184", "not a loopback address"),
            ("[::]:9184", "not a loopback address"),
            ("[::ffff:127.0.0.1]:9184", "not a loopback address"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1", "is not an address"),
            ("localhost:9184", "is not an address"),
            ("", "is not an address"),
            ("unix:metrics.sock", "absolute path"),
            #[cfg(unix)]
            (&format!("unix:/{}", "x".repeat(100)), "too long"),
        ] {
            let err = text.parse::<Listen>().unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
