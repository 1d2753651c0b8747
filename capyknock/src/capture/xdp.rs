//! Loads the capyknock XDP program (and, for veths, the same pre-filter as a tc ingress
//! program, which shares its maps), fills its maps, attaches it to interfaces, reads its counters
//! and consumes its ring buffer on a thread of its own (`capyknock-ring`), which hands
//! candidates to the daemon's core through a bounded channel. The program itself is
//! `capyknock-ebpf`; `build.rs` compiles it into [`OBJECT`].
//!
//! The ring buffer has its own thread, not a tokio task, so that the knock path is a known set
//! of threads that `realtime_priority` can raise (`server::realtime`) without raising the
//! runtime's, which also serve the control socket and the metrics endpoint. It costs no extra
//! hop: before, a runtime thread woke from `epoll` and then woke the core the same way.
//!
//! [`XdpFilter`] is the loaded program with its maps (also used directly by the
//! `BPF_PROG_TEST_RUN` tests); [`XdpCapture`] is the attached program plus the ring buffer
//! reader, the `xdp` mode of [`super::Capture`]. Dropping either detaches from every interface.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp,
        XdpMode, tc::SchedClassifierLinkId, tc::TcAttachOptions, xdp::XdpLinkId,
    },
};
use capyknock_common::{
    counters::Counter,
    maps::{self, Config, FAMILY_V4, KnockEvent, TagKey, UserId},
};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};
use tokio::sync::mpsc;

use super::{
    Candidate, CaptureConfig, PrefilterCounters, XdpAttachMode,
    ifaces::{self, IfaceError},
    xdp_log::{self, LogForwarder, XdpLogError},
};

/// The compiled XDP object, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capyknock-xdp"));

/// Candidates queued between the ring buffer thread and [`XdpCapture::next`]; when it is full
/// the thread waits and the ring buffer fills (and counts what it drops, `ringbuf_full`).
const QUEUE_LEN: usize = 1024;
/// How long the ring buffer thread waits before it checks whether capture was dropped.
const POLL_MS: u16 = 100;

/// Oldest kernel the program runs on: `bpf_xdp_load_bytes` arrived in Linux 5.18 (ring buffers
/// in 5.8, bounded loops in 5.3).
pub const MIN_KERNEL: (u32, u32) = (5, 18);

/// Why the XDP program could not be used.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This binary was built without the `ebpf` feature: its XDP object is an empty placeholder.
    #[error(
        "this capyknock was built without the XDP program (cargo feature `ebpf`); use capture = \"pcap\" or \"udp\", or rebuild with the default features"
    )]
    NotBuilt,
    /// Not allowed to create BPF maps or load programs.
    #[error(
        "no permission to load BPF programs: run as root, or grant CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON"
    )]
    NoPermission(#[source] aya::EbpfError),
    /// The running kernel lacks what the program needs.
    #[error(
        "kernel {release} is too old for the XDP pre-filter (needs Linux {}.{} or newer)",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld {
        /// `uname -r`.
        release: String,
    },
    /// Loading failed for another reason.
    #[error("cannot load the XDP object into the kernel")]
    Load(#[source] aya::EbpfError),
    /// The object lacks a map or program this binary expects.
    #[error("the XDP object has no {0:?}: binary and eBPF program are out of step")]
    Missing(&'static str),
    /// The verifier or the kernel refused the program.
    #[error("XDP program rejected by the kernel")]
    Program(#[source] ProgramError),
    /// An interface problem.
    #[error(transparent)]
    Iface(#[from] IfaceError),
    /// Attaching failed.
    #[error("cannot attach the pre-filter to interface {iface:?} in {mode} mode")]
    Attach {
        /// The interface.
        iface: String,
        /// The mode tried last.
        mode: XdpAttachMode,
        /// What the kernel said.
        #[source]
        source: ProgramError,
    },
    /// A map access failed.
    #[error("BPF map {name} access failed")]
    Map {
        /// The map.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: MapError,
    },
    /// Too many users for the kernel map.
    #[error(
        "{count} users configured, the XDP pre-filter holds at most {}",
        maps::USERS_MAX
    )]
    TooManyUsers {
        /// How many were given.
        count: usize,
    },
    /// Too many knock ports for the kernel map.
    #[error(
        "{count} knock ports configured, the XDP pre-filter holds at most {}",
        maps::KNOCK_PORTS_MAX
    )]
    TooManyPorts {
        /// How many were given.
        count: usize,
    },
    /// The ring buffer could not be watched (its thread did not start, or stopped).
    #[error("cannot watch the XDP ring buffer")]
    Watch(#[source] io::Error),
    /// The number of CPUs (for per-CPU maps) is unknown.
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] io::Error),
    /// The program's log records cannot be read.
    #[error(transparent)]
    Log(#[from] XdpLogError),
    /// The start-up self-test got the wrong action.
    #[error("XDP self-test failed: the program answered {action} to a frame it must drop")]
    SelfTest {
        /// The action it returned.
        action: u32,
    },
}

/// The loaded (and verified) XDP program with its maps, and the same pre-filter as a tc
/// program, loaded when an interface first needs it.
#[derive(Debug)]
pub struct XdpFilter {
    ebpf: Ebpf,
    /// The programs in the object this filter runs.
    programs: Programs,
    /// Whether the tc program is loaded (done at its first attachment).
    tc_loaded: bool,
    /// The ports set in the `KNOCK_PORTS` bitmap.
    knock_ports: Vec<u16>,
    /// Attached interfaces by index: name, link, mode.
    links: BTreeMap<u32, (String, Link, XdpAttachMode)>,
}

/// The names of a filter's XDP and tc programs in the object: the pre-filter
/// ([`maps::XDP_PROGRAM`], [`maps::TC_PROGRAM`]), or the empty ones for benchmarks.
#[derive(Debug, Clone, Copy)]
struct Programs {
    xdp: &'static str,
    tc: &'static str,
}

/// One attachment.
#[derive(Debug)]
enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

/// Which of the object's two pre-filter programs: the XDP program or its tc twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The XDP program ([`maps::XDP_PROGRAM`]).
    Xdp,
    /// The tc ingress program ([`maps::TC_PROGRAM`]).
    Tc,
}

impl Hook {
    /// What the program returns for a frame it passes or drops: `XDP_PASS` (2) or `XDP_DROP`
    /// (1); for tc `TCX_NEXT` (-1, so `u32::MAX`) or `TC_ACT_SHOT` (2).
    #[must_use]
    pub const fn returns(self, passes: bool) -> u32 {
        match (self, passes) {
            (Self::Xdp, true) => XDP_PASS,
            (Self::Xdp, false) => XDP_DROP,
            (Self::Tc, true) => TCX_NEXT,
            (Self::Tc, false) => TC_ACT_SHOT,
        }
    }
}

/// What one `BPF_PROG_TEST_RUN` with a repeat count reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunTiming {
    /// The program's return value: an XDP action, or a tc verdict ([`Hook::returns`]).
    pub action: u32,
    /// The kernel's average time per run, in nanoseconds.
    pub ns_per_run: u64,
}

/// The kernel's run-time statistics of a program (kept only while BPF statistics are enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunStats {
    /// How many times the program ran.
    pub run_count: u64,
    /// Their total run time in nanoseconds.
    pub run_time_ns: u64,
}

impl RunStats {
    /// `self - earlier`, saturating.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            run_count: self.run_count.saturating_sub(earlier.run_count),
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
        }
    }

    /// Average nanoseconds per run, if the program ran at all.
    #[must_use]
    pub fn ns_per_run(&self) -> Option<f64> {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a statistic: 53 bits of precision are plenty"
        )]
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

impl XdpFilter {
    /// Loads the program into the kernel and sets the knock ports. Rate limits start unlimited
    /// and the users map empty.
    pub fn load(knock_ports: &[u16]) -> Result<Self, XdpError> {
        let programs = Programs {
            xdp: maps::XDP_PROGRAM,
            tc: maps::TC_PROGRAM,
        };
        Self::load_programs(programs, knock_ports)
    }

    /// Loads the empty programs of the same object ([`maps::XDP_PASS_PROGRAM`] and
    /// [`maps::TC_PASS_PROGRAM`], which pass every frame at once): the floor benchmarks measure
    /// the real programs against.
    pub fn load_pass() -> Result<Self, XdpError> {
        let programs = Programs {
            xdp: maps::XDP_PASS_PROGRAM,
            tc: maps::TC_PASS_PROGRAM,
        };
        Self::load_programs(programs, &[])
    }

    fn load_programs(programs: Programs, knock_ports: &[u16]) -> Result<Self, XdpError> {
        if OBJECT.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        check_kernel()?;
        // No kernel BTF: the program has no CO-RE relocations (it reads packet bytes, never a
        // kernel struct), and parsing /sys/kernel/btf/vmlinux (several MiB) is what made the
        // daemon's start-up peak RSS (docs/PERFORMANCE.md, "Memory").
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(classify_load_error)?;
        program_mut(&mut ebpf, programs.xdp)?
            .load()
            .map_err(XdpError::Program)?;
        let mut filter = Self {
            ebpf,
            programs,
            tc_loaded: false,
            knock_ports: Vec::new(),
            links: BTreeMap::new(),
        };
        filter.set_knock_ports(knock_ports)?;
        Ok(filter)
    }

    /// Replaces the set of knock ports.
    pub fn set_knock_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        if ports.len() > maps::KNOCK_PORTS_MAX as usize {
            return Err(XdpError::TooManyPorts { count: ports.len() });
        }
        // Rewrite every word that holds an old or a new port.
        let mut words: Vec<u32> = self
            .knock_ports
            .iter()
            .chain(ports)
            .map(|p| maps::knock_port_bit(*p).0)
            .collect();
        words.sort_unstable();
        words.dedup();
        let map_err = map_err(maps::KNOCK_PORTS);
        let mut bitmap: Array<_, u64> =
            Array::try_from(self.map_mut(maps::KNOCK_PORTS)?).map_err(map_err)?;
        for word in words {
            let value = ports
                .iter()
                .map(|p| maps::knock_port_bit(*p))
                .filter(|(w, _)| *w == word)
                .fold(0u64, |acc, (_, bit)| acc | bit);
            bitmap.set(word, value, 0).map_err(map_err)?;
        }
        self.knock_ports = ports.to_vec();
        Ok(())
    }

    /// Replaces the known users: user id -> tag key.
    pub fn set_users(&mut self, users: &[(UserId, TagKey)]) -> Result<(), XdpError> {
        if users.len() > maps::USERS_MAX as usize {
            return Err(XdpError::TooManyUsers { count: users.len() });
        }
        let map_err = map_err(maps::USERS);
        let mut map: HashMap<_, UserId, TagKey> =
            HashMap::try_from(self.map_mut(maps::USERS)?).map_err(map_err)?;
        let stale: Vec<UserId> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !users.iter().any(|(u, _)| u == id))
            .collect();
        for id in &stale {
            map.remove(id).map_err(map_err)?;
        }
        for (id, key) in users {
            map.insert(id, key, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Sets the current TOTP time step.
    pub fn set_time_step(&mut self, step: u64) -> Result<(), XdpError> {
        let map_err = map_err(maps::TIME_STEP);
        let mut array: Array<_, u64> =
            Array::try_from(self.map_mut(maps::TIME_STEP)?).map_err(map_err)?;
        array.set(0, step, 0).map_err(map_err)
    }

    /// Sets the rate limits.
    pub fn set_config(&mut self, config: &Config) -> Result<(), XdpError> {
        let map_err = map_err(maps::CONFIG);
        let mut array: Array<_, Config> =
            Array::try_from(self.map_mut(maps::CONFIG)?).map_err(map_err)?;
        array.set(0, config, 0).map_err(map_err)
    }

    /// Attaches to `iface`. With `mode` `None`, tries native (driver) XDP first and falls back to
    /// generic SKB mode, logging the fallback; a veth gets the tc program instead
    /// (`auto_prefers_tc`), or SKB mode if tcx is unavailable. Returns the mode used.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: Option<XdpAttachMode>,
    ) -> Result<XdpAttachMode, XdpError> {
        let ifindex = ifaces::index(iface)?;
        self.attach_index(iface, ifindex, mode)
    }

    /// Attaches to the interface with index `ifindex` (called `iface`), as [`Self::attach`]
    /// does. Attaching again to an interface already attached to is a no-op.
    pub fn attach_index(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: Option<XdpAttachMode>,
    ) -> Result<XdpAttachMode, XdpError> {
        if let Some((_, _, used)) = self.links.get(&ifindex) {
            return Ok(*used);
        }
        let (link, used) = if let Some(mode) = mode {
            (self.attach_in(iface, ifindex, mode)?, mode)
        } else {
            self.attach_auto(iface, ifindex)?
        };
        tracing::info!(iface, ifindex, mode = %used, "pre-filter attached");
        self.links.insert(ifindex, (iface.to_owned(), link, used));
        Ok(used)
    }

    /// `xdp_mode = "auto"`: tc ingress on a veth (`auto_prefers_tc`), native XDP elsewhere, and
    /// XDP in SKB mode when that fails, with a warning.
    fn attach_auto(
        &mut self,
        iface: &str,
        ifindex: u32,
    ) -> Result<(Link, XdpAttachMode), XdpError> {
        let first = if auto_prefers_tc(iface, ifindex) {
            XdpAttachMode::Tc
        } else {
            XdpAttachMode::Native
        };
        match self.attach_in(iface, ifindex, first) {
            Ok(link) => Ok((link, first)),
            Err(err) => {
                tracing::warn!(
                    iface,
                    tried = %first,
                    error = %super::ErrorChain(&err),
                    "attach mode unavailable on this interface, using XDP in SKB mode"
                );
                let mode = XdpAttachMode::Skb;
                Ok((self.attach_in(iface, ifindex, mode)?, mode))
            }
        }
    }

    /// Attaches in `mode`: the XDP program to `ifindex` in driver or generic mode, or the tc
    /// program to the ingress of `iface`.
    fn attach_in(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: XdpAttachMode,
    ) -> Result<Link, XdpError> {
        let xdp_mode = match mode {
            XdpAttachMode::Tc => return self.attach_tc(iface),
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        };
        program_mut(&mut self.ebpf, self.programs.xdp)?
            .attach_to_if_index(ifindex, xdp_mode)
            .map(Link::Xdp)
            .map_err(|source| XdpError::Attach {
                iface: iface.to_owned(),
                mode,
                source,
            })
    }

    /// Attaches the tc program to the ingress of `iface` with a tcx link (first loading the
    /// program, if no interface had it yet). Passing frames go on to the tc programs after
    /// it.
    fn attach_tc(&mut self, iface: &str) -> Result<Link, XdpError> {
        let attach_err = |source| XdpError::Attach {
            iface: iface.to_owned(),
            mode: XdpAttachMode::Tc,
            source,
        };
        self.loaded_tc_program()?
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map(Link::Tc)
            .map_err(attach_err)
    }

    /// The tc program, loaded first if nothing has used it yet.
    fn loaded_tc_program(&mut self) -> Result<&mut SchedClassifier, XdpError> {
        let program = tc_program_mut(&mut self.ebpf, self.programs.tc)?;
        if !self.tc_loaded {
            program.load().map_err(XdpError::Program)?;
            self.tc_loaded = true;
        }
        Ok(program)
    }

    /// Closes one attachment.
    fn detach(&mut self, link: Link) -> Result<(), XdpError> {
        match link {
            Link::Xdp(link) => program_mut(&mut self.ebpf, self.programs.xdp)?.detach(link),
            Link::Tc(link) => tc_program_mut(&mut self.ebpf, self.programs.tc)?.detach(link),
        }
        .map_err(XdpError::Program)
    }

    /// The interfaces attached to, with their modes, by interface index.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, XdpAttachMode)> {
        self.links.values().map(|(i, _, m)| (i.as_str(), *m))
    }

    /// The indexes and names of the interfaces attached to.
    #[must_use]
    pub fn attached(&self) -> BTreeMap<u32, String> {
        self.links
            .iter()
            .map(|(index, (name, _, _))| (*index, name.clone()))
            .collect()
    }

    /// Forgets interface `ifindex`, which is gone (the kernel removed the attachment with it).
    pub fn forget(&mut self, ifindex: u32) {
        let Some((iface, link, _)) = self.links.remove(&ifindex) else {
            return;
        };
        // Closes our link; the interface, and so the attachment, is gone already.
        if let Err(err) = self.detach(link) {
            tracing::debug!(iface, error = %super::ErrorChain(&err), "link of a removed interface");
        }
    }

    /// Detaches from every interface (dropping the filter does the same).
    pub fn detach_all(&mut self) {
        for (iface, link, _) in std::mem::take(&mut self.links).into_values() {
            match self.detach(link) {
                Ok(()) => tracing::info!(iface, "pre-filter detached"),
                Err(err) => {
                    tracing::warn!(iface, error = %super::ErrorChain(&err), "detach failed");
                }
            }
        }
    }

    /// Runs the XDP program once on `frame` with `BPF_PROG_TEST_RUN` and returns its XDP
    /// action. No interface needed; maps, counters and the ring buffer are updated as for a real
    /// frame.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, XdpError> {
        self.test_run_repeat(Hook::Xdp, frame, 1).map(|t| t.action)
    }

    /// Runs `hook`'s program `repeat` times on `frame` in one `BPF_PROG_TEST_RUN` (each run sees
    /// the same bytes, and the maps as the previous run left them; the kernel presents the frame
    /// as arriving on loopback) and returns the last return value ([`Hook::returns`]) and the
    /// kernel's average time per run. For the tc program the kernel refuses a frame shorter than
    /// an Ethernet header, or than the IP header its EtherType announces.
    pub fn test_run_repeat(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunTiming, XdpError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        match hook {
            Hook::Xdp => program_mut(&mut self.ebpf, self.programs.xdp)?.test_run(opts),
            Hook::Tc => self.loaded_tc_program()?.test_run(opts),
        }
        .map(|r| TestRunTiming {
            action: r.return_value,
            ns_per_run: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
        })
        .map_err(XdpError::Program)
    }

    /// The kernel's run count and run time of the filter's programs (XDP and tc, summed),
    /// counted only while BPF statistics are enabled (`kernel.bpf_stats_enabled`, or
    /// [`aya::sys::enable_stats`]).
    pub fn run_stats(&mut self) -> Result<RunStats, XdpError> {
        let mut infos = vec![
            program_mut(&mut self.ebpf, self.programs.xdp)?
                .info()
                .map_err(XdpError::Program)?,
        ];
        if self.tc_loaded {
            infos.push(
                tc_program_mut(&mut self.ebpf, self.programs.tc)?
                    .info()
                    .map_err(XdpError::Program)?,
            );
        }
        Ok(infos
            .iter()
            .fold(RunStats::default(), |sum, info| RunStats {
                run_count: sum.run_count.saturating_add(info.run_count()),
                run_time_ns: sum
                    .run_time_ns
                    .saturating_add(u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX)),
            }))
    }

    /// Starts forwarding the program's log records into `tracing` (rate-limited; see
    /// [`xdp_log`]) until the returned forwarder is dropped. Must run inside a tokio runtime.
    pub fn forward_logs(&mut self) -> Result<LogForwarder, XdpError> {
        Ok(xdp_log::forward(&mut self.ebpf)?)
    }

    /// The start-up self-test: runs a frame the program must drop (a first IP fragment to the
    /// first knock port) through it with `BPF_PROG_TEST_RUN`, on which the program also writes
    /// its self-test log record, then sets the verdict counters back to zero.
    pub fn self_test(&mut self) -> Result<(), XdpError> {
        let port = self
            .knock_ports
            .first()
            .copied()
            .unwrap_or(capyknock_common::wire::DEFAULT_KNOCK_PORT);
        let action = self.test_run(&self_test_frame(port))?;
        if action != XDP_DROP {
            return Err(XdpError::SelfTest { action });
        }
        self.reset_counters()
    }

    /// Sets every verdict counter on every CPU to zero.
    pub fn reset_counters(&mut self) -> Result<(), XdpError> {
        let map_err = map_err(maps::COUNTERS);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Cpus(e))?;
        let mut array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map_mut(maps::COUNTERS)?).map_err(map_err)?;
        for counter in Counter::ALL {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(XdpError::Cpus)?;
            array.set(counter.index(), zeros, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Current verdict counters, summed over all CPUs.
    pub fn counters(&self) -> Result<PrefilterCounters, XdpError> {
        let map_err = map_err(maps::COUNTERS);
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(XdpError::Missing(maps::COUNTERS))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        let mut out = PrefilterCounters::default();
        for (counter, slot) in Counter::ALL.iter().zip(out.0.iter_mut()) {
            let per_cpu = array.get(&counter.index(), 0).map_err(map_err)?;
            *slot = per_cpu.iter().fold(0, |a, b| a.saturating_add(*b));
        }
        Ok(out)
    }

    /// Takes the ring buffer out of the program's maps, for a reader. Can be done once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, XdpError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(XdpError::Missing(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, XdpError> {
        self.ebpf.map_mut(name).ok_or(XdpError::Missing(name))
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// `XDP_DROP`.
const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
const XDP_PASS: u32 = 2;
/// `TCX_NEXT` (-1): the tc program leaves the frame to the next one.
const TCX_NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`: the tc program drops the frame.
const TC_ACT_SHOT: u32 = 2;

/// The self-test frame: an IPv4 first fragment (more-fragments set) of a UDP datagram to
/// `port`, which the pre-filter counts as malformed and drops.
fn self_test_frame(port: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x20, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    f.extend_from_slice(&[0, 9]);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&[0, 16, 0, 0]);
    f.extend_from_slice(b"selftest");
    f
}

/// Turns one ring-buffer record into a candidate; `None` for a record of the wrong shape.
#[must_use]
pub fn parse_event(record: &[u8]) -> Option<Candidate> {
    let event = KnockEvent::from_bytes(record)?;
    let v6 = std::net::Ipv6Addr::from(event.src_addr);
    let ip = if event.family == FAMILY_V4 {
        std::net::IpAddr::V4(v6.to_ipv4_mapped()?)
    } else {
        std::net::IpAddr::V6(v6)
    };
    Some(Candidate {
        src: SocketAddr::new(ip, event.src_port),
        ifindex: Some(event.ifindex),
        bytes: event.bytes,
    })
}

/// The `xdp` capture mode: the attached program, and the candidates its ring buffer thread
/// reads. Dropping it stops the thread (within [`POLL_MS`]) and detaches the program.
pub struct XdpCapture {
    filter: XdpFilter,
    events: mpsc::Receiver<Candidate>,
    /// Forwards the program's rare log records; `None` if they could not be opened.
    logs: Option<LogForwarder>,
    /// The attach mode asked for, for interfaces that appear later.
    mode: Option<XdpAttachMode>,
}

impl std::fmt::Debug for XdpCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCapture")
            .field("filter", &self.filter)
            .field("queued", &self.events.len())
            .field("logs", &self.logs)
            .field("mode", &self.mode)
            .finish()
    }
}

impl XdpCapture {
    /// Loads the program, configures it, attaches it to the configured interfaces (every
    /// interface that is up, except loopback, if none) and starts the ring buffer thread.
    pub fn open(config: &CaptureConfig) -> Result<Self, XdpError> {
        let ifaces = ifaces::resolve(&config.ifaces)?;
        let mut filter = XdpFilter::load(&config.knock_ports)?;
        filter.set_config(&config.prefilter_config())?;
        let logs = filter
            .forward_logs()
            .inspect_err(|err| {
                tracing::warn!(
                    error = %super::ErrorChain(err),
                    "the XDP program's log records will not be shown"
                );
            })
            .ok();
        filter.self_test()?;
        for (iface, _) in &ifaces {
            // An error here drops `filter`, detaching from the interfaces done so far.
            filter.attach(iface, config.xdp_mode)?;
        }
        let ring = filter.take_events()?;
        tracing::debug!(fd = ring.as_raw_fd(), "watching the XDP ring buffer");
        let (tx, events) = mpsc::channel(QUEUE_LEN);
        let priority = config.realtime_priority;
        std::thread::Builder::new()
            .name(crate::server::realtime::RING_THREAD.into())
            .spawn(move || read_ring(ring, &tx, priority))
            .map_err(XdpError::Watch)?;
        Ok(Self {
            filter,
            events,
            logs,
            mode: config.xdp_mode,
        })
    }

    /// Attaches to an interface that appeared after start, in the configured attach mode.
    pub fn attach_new(&mut self, iface: &str, ifindex: u32) -> Result<XdpAttachMode, XdpError> {
        self.filter.attach_index(iface, ifindex, self.mode)
    }

    /// The next candidate from the ring buffer. Cancel-safe.
    pub async fn next(&mut self) -> Result<Candidate, XdpError> {
        self.events
            .recv()
            .await
            .ok_or_else(|| XdpError::Watch(io::Error::other("the ring buffer thread stopped")))
    }

    /// The loaded program.
    #[must_use]
    pub fn filter(&self) -> &XdpFilter {
        &self.filter
    }

    /// The loaded program, for map updates.
    pub fn filter_mut(&mut self) -> &mut XdpFilter {
        &mut self.filter
    }
}

/// The ring buffer thread: waits until the ring holds records, hands each candidate to
/// [`XdpCapture::next`], and ends when the capture is dropped.
fn read_ring(
    mut ring: RingBuf<MapData>,
    tx: &mpsc::Sender<Candidate>,
    priority: Option<crate::server::realtime::RealtimePriority>,
) {
    crate::server::realtime::this_thread(priority, crate::server::realtime::RING_THREAD);
    while !tx.is_closed() {
        // Started before the daemon dropped its privileges: drop this thread's too.
        crate::server::privsep::sandbox::catch_up();
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot wait on the XDP ring buffer, capture stops");
                return;
            }
        }
        while let Some(record) = ring.next() {
            let Some(candidate) = parse_event(&record) else {
                tracing::warn!(len = record.len(), "malformed XDP ring buffer record");
                continue;
            };
            drop(record);
            if tx.blocking_send(candidate).is_err() {
                return;
            }
        }
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> XdpError + Copy {
    move |source| XdpError::Map { name, source }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, XdpError> {
    ebpf.program_mut(name)
        .ok_or(XdpError::Missing(name))?
        .try_into()
        .map_err(XdpError::Program)
}

fn tc_program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, XdpError> {
    ebpf.program_mut(name)
        .ok_or(XdpError::Missing(name))?
        .try_into()
        .map_err(XdpError::Program)
}

/// Refuses kernels older than [`MIN_KERNEL`] with a clear message, before the verifier gives an
/// obscure one.
fn check_kernel() -> Result<(), XdpError> {
    let release = kernel_release();
    match parse_release(&release) {
        Some(version) if version < MIN_KERNEL => Err(XdpError::KernelTooOld { release }),
        _ => Ok(()),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `"6.18.44-foo"` -> `(6, 18)`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Names the common load failures: no permission (EPERM/EACCES anywhere in the chain) or a
/// kernel that does not know a map type or helper (EINVAL while creating maps).
fn classify_load_error(err: aya::EbpfError) -> XdpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return XdpError::NoPermission(err);
        }
        source = e.source();
    }
    XdpError::Load(err)
}

/// The name of an XDP action as the kernel's headers spell it (`XDP_PASS`), for messages.
#[must_use]
pub const fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "an unknown action",
    }
}

/// Whether `xdp_mode = "auto"` attaches the tc program to interface `ifindex` rather than
/// trying native XDP first: on a veth. Driver-mode XDP on a veth makes the veth driver turn off
/// its peer's segmentation offload and cap its MTU (`veth_xdp_set` in the kernel), which cost
/// pass-through TCP 64-78 % of its throughput (docs/PERFORMANCE.md); generic (SKB) XDP copies
/// every non-linear segment before any program runs, which made bulk TCP under a knock-port
/// flood slower than with no program at all. At tc ingress the program sees the socket buffer
/// as it is and still drops knock-port traffic before any socket. `xdp_mode = "native"` or
/// `"skb"` still forces XDP. When the kind cannot be read, auto tries native XDP.
fn auto_prefers_tc(iface: &str, ifindex: u32) -> bool {
    match super::link_kind::of_index(ifindex) {
        Ok(Some(rtnetlink::packet_route::link::InfoKind::Veth)) => {
            tracing::info!(
                iface,
                "veth: the pre-filter at tc ingress (XDP on a veth slows pass-through TCP; \
                 xdp_mode = \"native\" or \"skb\" forces XDP)"
            );
            true
        }
        Ok(_) => false,
        Err(err) => {
            tracing::debug!(iface, error = %super::ErrorChain(&err), "link kind unknown");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_have_their_kernel_names() {
        assert_eq!(action_name(1), "XDP_DROP");
        assert_eq!(action_name(2), "XDP_PASS");
        assert_eq!(action_name(99), "an unknown action");
    }

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
        assert!(parse_release("5.18.0").unwrap() >= MIN_KERNEL);
        assert!(parse_release("6.1").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn load_errors_name_the_cause() {
        let create = |errno| {
            aya::EbpfError::MapError(MapError::CreateError {
                name: "EVENTS".to_owned(),
                io_error: io::Error::from_raw_os_error(errno),
            })
        };
        let err = classify_load_error(create(libc::EPERM));
        assert!(matches!(err, XdpError::NoPermission(_)));
        assert!(err.to_string().contains("CAP_BPF"), "{err}");
        assert!(matches!(
            classify_load_error(create(libc::EACCES)),
            XdpError::NoPermission(_)
        ));
        assert!(matches!(
            classify_load_error(create(libc::EINVAL)),
            XdpError::Load(_)
        ));
        let old = XdpError::KernelTooOld {
            release: "5.4.0-foo".to_owned(),
        };
        assert!(old.to_string().contains("5.4.0-foo") && old.to_string().contains("5.18"));
    }

    #[test]
    fn the_self_test_frame_is_malformed_for_the_prefilter() {
        let mut p = super::super::userspace::UserPrefilter::new(&[4242], Config::default());
        let verdict = p.check_frame(&self_test_frame(4242), None, 0, &mut |_| true);
        assert_eq!(verdict, Counter::Malformed);
    }

    #[test]
    fn events_become_candidates() {
        let mut raw = vec![0u8; KnockEvent::SIZE];
        raw[..16].copy_from_slice(
            &std::net::Ipv4Addr::new(192, 0, 2, 7)
                .to_ipv6_mapped()
                .octets(),
        );
        raw[16..20].copy_from_slice(&3u32.to_ne_bytes());
        raw[20..22].copy_from_slice(&40000u16.to_ne_bytes());
        raw[22] = FAMILY_V4;
        let c = parse_event(&raw).unwrap();
        assert_eq!(c.src, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(c.ifindex, Some(3));
        raw[22] = maps::FAMILY_V6;
        let c = parse_event(&raw).unwrap();
        assert_eq!(c.src, "[::ffff:192.0.2.7]:40000".parse().unwrap());
        // An IPv4 event whose address is not IPv4-mapped is refused.
        raw[22] = FAMILY_V4;
        raw[0] = 0x20;
        assert!(parse_event(&raw).is_none());
        assert!(parse_event(&raw[1..]).is_none());
    }
}
