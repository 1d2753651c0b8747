//! Loads the capyknock XDP program, fills its maps, attaches it to interfaces and reads its
//! counters. The program itself is `capyknock-ebpf`; `build.rs` compiles it into [`OBJECT`].

use aya::{
    Ebpf,
    maps::{HashMap, MapError, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use capyknock_common::{counters::Counter, maps};

/// The compiled XDP object, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capyknock-xdp"));

/// Why the XDP program could not be used.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("cannot load the XDP object into the kernel (needs root or CAP_BPF + CAP_NET_ADMIN)")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no {0:?}: binary and eBPF program are out of step")]
    Missing(&'static str),
    #[error("XDP program rejected by the kernel")]
    Program(#[source] ProgramError),
    #[error("cannot attach XDP to interface {iface:?}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("invalid interface name {0:?}")]
    BadInterface(String),
    #[error("BPF map {name} access failed")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Frame counts per verdict, summed over CPUs, indexed like [`Counter::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    /// The count for one verdict.
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter.index() as usize).copied().unwrap_or(0)
    }
}

/// The loaded (and verified) XDP program with its maps.
#[derive(Debug)]
pub struct XdpFilter {
    ebpf: Ebpf,
}

impl XdpFilter {
    /// Loads the program into the kernel and sets the knock ports.
    pub fn load(knock_ports: &[u16]) -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(XdpError::Load)?;
        program_mut(&mut ebpf)?.load().map_err(XdpError::Program)?;
        let mut filter = Self { ebpf };
        filter.set_knock_ports(knock_ports)?;
        Ok(filter)
    }

    /// Replaces the set of knock ports.
    pub fn set_knock_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        let map_err = |source| XdpError::Map {
            name: maps::KNOCK_PORTS,
            source,
        };
        let map = self
            .ebpf
            .map_mut(maps::KNOCK_PORTS)
            .ok_or(XdpError::Missing(maps::KNOCK_PORTS))?;
        let mut map: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(map_err)?;
        let stale: Vec<u16> = map.keys().filter_map(Result::ok).collect();
        for port in stale.iter().filter(|p| !ports.contains(p)) {
            map.remove(port).map_err(map_err)?;
        }
        for port in ports {
            map.insert(port, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Attaches to `iface`. With `mode` `None`, tries native (driver) mode first and falls back to
    /// generic SKB mode, logging the fallback.
    pub fn attach(&mut self, iface: &str, mode: Option<XdpMode>) -> Result<XdpLinkId, XdpError> {
        if iface.is_empty() || iface.len() > 15 || iface.contains(['\0', '/']) {
            return Err(XdpError::BadInterface(iface.to_owned()));
        }
        let program = program_mut(&mut self.ebpf)?;
        let attach_err = |source| XdpError::Attach {
            iface: iface.to_owned(),
            source,
        };
        match mode {
            Some(mode) => program.attach(iface, mode).map_err(attach_err),
            None => match program.attach(iface, XdpMode::Driver) {
                Ok(link) => Ok(link),
                Err(err) => {
                    tracing::warn!(iface, error = %err, "native XDP unavailable, using SKB mode");
                    program.attach(iface, XdpMode::Skb).map_err(attach_err)
                }
            },
        }
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` and returns its XDP action.
    /// No interface needed; counters are updated as for a real frame.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, XdpError> {
        let program = program_mut(&mut self.ebpf)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        program
            .test_run(opts)
            .map(|r| r.return_value)
            .map_err(XdpError::Program)
    }

    /// Current verdict counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let map_err = |source| XdpError::Map {
            name: maps::COUNTERS,
            source,
        };
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(XdpError::Missing(maps::COUNTERS))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        let mut out = Counters::default();
        for (counter, slot) in Counter::ALL.iter().zip(out.0.iter_mut()) {
            let per_cpu = array.get(&counter.index(), 0).map_err(map_err)?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(maps::XDP_PROGRAM)
        .ok_or(XdpError::Missing(maps::XDP_PROGRAM))?
        .try_into()
        .map_err(XdpError::Program)
}
