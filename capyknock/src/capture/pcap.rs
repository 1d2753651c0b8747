//! libpcap capture: the fallback where XDP is unavailable (old kernel, no BPF permission for
//! programs, an interface whose driver refuses XDP), and the capture without a listening socket
//! on macOS and FreeBSD (BPF devices). Frames of every link type [`LinkLayer`] knows are parsed:
//! Ethernet, BSD loopback (`DLT_NULL`, `DLT_LOOP`) and raw IP.
//!
//! One blocking thread per interface reads frames that match `udp dst port N` (also behind a VLAN
//! tag), runs the userspace pre-filter on each and feeds candidates to a bounded tokio channel.
//! The handle is non-blocking: the thread waits in `poll(2)` until libpcap's ring holds frames,
//! then takes up to [`BATCH`] of them with the pre-filter locked once.
//! libpcap only copies packets: the network stack still receives them, so the firewall backend
//! must drop the knock port, or the kernel answers with ICMP "port unreachable".
//!
//! Interfaces that appear later get a handle and a thread of their own
//! ([`PcapCapture::attach_new`], driven by `super::link_watch`); a removed interface's thread
//! ends on the read error (or its stop flag).

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

use pcap::{Active, Capture as PcapHandle, Direction};
use tokio::sync::mpsc;

use super::{
    Candidate, CaptureConfig,
    ifaces::{self, IfaceError},
    link_layer::LinkLayer,
    userspace::{SharedPrefilter, UserPrefilter},
};

/// Candidates queued between the capture threads and [`PcapCapture::next`].
pub const QUEUE_LEN: usize = 1024;
/// Bytes captured per frame: more than any header chain the parser follows plus a knock.
const SNAPLEN: i32 = 8192;
/// How long a read waits before the thread checks whether it should stop.
const READ_TIMEOUT_MS: u16 = 100;
/// Frames judged per wake-up with the pre-filter locked once.
const BATCH: usize = 256;
/// The kernel ring libpcap maps per interface, in bytes: libpcap's default, set explicitly. The
/// ring is resident memory of the daemon (an 8 MiB ring measured 44 MiB RSS against 19 MiB with
/// this one, with no measurable gain in knock latency under a flood; docs/PERFORMANCE.md), and
/// `interfaces = "all"` opens one ring per interface.
const BUFFER_BYTES: i32 = 2 << 20;

/// Why libpcap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// An interface problem.
    #[error(transparent)]
    Iface(#[from] IfaceError),
    /// libpcap refused to open the interface (often: no `CAP_NET_RAW`).
    #[error("libpcap cannot capture on {iface:?} (needs root or CAP_NET_RAW)")]
    Open {
        /// The interface.
        iface: String,
        /// libpcap's message.
        #[source]
        source: pcap::Error,
    },
    /// The capture filter did not compile.
    #[error("libpcap rejected the filter {filter:?}")]
    Filter {
        /// The filter expression.
        filter: String,
        /// libpcap's message.
        #[source]
        source: pcap::Error,
    },
    /// A link type the parser does not know.
    #[error(
        "interface {iface:?} has link type {linktype}; supported: Ethernet, BSD loopback \
         (DLT_NULL, DLT_LOOP) and raw IP"
    )]
    LinkType {
        /// The interface.
        iface: String,
        /// Its link type number.
        linktype: i32,
    },
    /// The capture thread could not start.
    #[error("cannot start the capture thread")]
    Thread(#[source] std::io::Error),
}

/// Captures knocks with libpcap.
#[derive(Debug)]
pub struct PcapCapture {
    rx: mpsc::Receiver<Candidate>,
    /// Kept for the threads of interfaces that appear later; so `next` waits for them rather
    /// than ending when the last interface is removed.
    tx: mpsc::Sender<Candidate>,
    prefilter: SharedPrefilter,
    /// The BPF filter expression every handle gets.
    filter: String,
    stop: Arc<AtomicBool>,
    /// The capture thread of each interface, by index: its name, its own stop flag, the thread.
    threads: BTreeMap<u32, (String, Arc<AtomicBool>, JoinHandle<()>)>,
}

/// The BPF filter expression for `ports`: UDP to any of them, plain or behind one VLAN tag.
#[must_use]
pub fn filter_expression(ports: &[u16]) -> String {
    let ports = ports
        .iter()
        .map(|p| format!("udp dst port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    format!("({ports}) or (vlan and ({ports}))")
}

impl PcapCapture {
    /// Opens every interface and starts the capture threads.
    pub fn open(config: &CaptureConfig) -> Result<Self, PcapError> {
        let ifaces = ifaces::resolve(&config.ifaces)?;
        let filter = filter_expression(&config.knock_ports);
        let mut handles = Vec::new();
        for (iface, index) in ifaces {
            handles.push((open_one(&iface, &filter)?, iface, index));
        }
        let prefilter = SharedPrefilter::new(UserPrefilter::new(
            &config.knock_ports,
            config.prefilter_config(),
        ));
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let mut capture = Self {
            rx,
            tx,
            prefilter,
            filter,
            stop: Arc::new(AtomicBool::new(false)),
            threads: BTreeMap::new(),
        };
        for (handle, iface, index) in handles {
            // An error drops `capture`, which stops the threads started so far.
            capture.spawn(handle, iface, index)?;
        }
        Ok(capture)
    }

    /// Starts capturing on an interface that appeared after start. Already capturing on it (and
    /// its thread still running): nothing to do.
    pub fn attach_new(&mut self, iface: &str, index: u32) -> Result<(), PcapError> {
        if self
            .threads
            .get(&index)
            .is_some_and(|(_, _, t)| !t.is_finished())
        {
            return Ok(());
        }
        let handle = open_one(iface, &self.filter)?;
        self.spawn(handle, iface.to_owned(), index)
    }

    /// Stops capturing on interface `index`, which is gone.
    pub fn forget(&mut self, index: u32) {
        if let Some((_, stop, _)) = self.threads.remove(&index) {
            stop.store(true, Ordering::Relaxed);
        }
    }

    /// The indexes and names of the interfaces captured on.
    #[must_use]
    pub fn attached(&self) -> BTreeMap<u32, String> {
        self.threads
            .iter()
            .map(|(index, (name, _, _))| (*index, name.clone()))
            .collect()
    }

    fn spawn(
        &mut self,
        (handle, link): (PcapHandle<Active>, LinkLayer),
        iface: String,
        index: u32,
    ) -> Result<(), PcapError> {
        let own_stop = Arc::new(AtomicBool::new(false));
        let (shared, tx) = (self.prefilter.clone(), self.tx.clone());
        let stops = [Arc::clone(&self.stop), Arc::clone(&own_stop)];
        tracing::info!(
            iface = %iface,
            ifindex = index,
            link = %link,
            filter = %self.filter,
            "pcap capture on"
        );
        let name = iface.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pcap-{iface}"))
            .spawn(move || read_loop(handle, link, &iface, index, &shared, &tx, &stops))
            .map_err(PcapError::Thread)?;
        self.threads.insert(index, (name, own_stop, thread));
        Ok(())
    }

    /// The next candidate; `None` once capture stopped.
    pub async fn next(&mut self) -> Option<Candidate> {
        self.rx.recv().await
    }

    /// The shared pre-filter state.
    pub fn prefilter(&self) -> std::sync::MutexGuard<'_, UserPrefilter> {
        self.prefilter.lock()
    }
}

impl Drop for PcapCapture {
    fn drop(&mut self) {
        // The threads notice within READ_TIMEOUT_MS and close their handles; not joined here so
        // dropping never blocks an async task.
        self.stop.store(true, Ordering::Relaxed);
        self.threads.clear();
    }
}

/// Opens `iface` with `filter`; returns the handle and its link layer.
fn open_one(iface: &str, filter: &str) -> Result<(PcapHandle<Active>, LinkLayer), PcapError> {
    let open_err = |source| PcapError::Open {
        iface: iface.to_owned(),
        source,
    };
    let mut cap = PcapHandle::from_device(iface)
        .map_err(open_err)?
        .promisc(false)
        .immediate_mode(true)
        .snaplen(SNAPLEN)
        .buffer_size(BUFFER_BYTES)
        .timeout(i32::from(READ_TIMEOUT_MS))
        .open()
        .map_err(open_err)?;
    let linktype = cap.get_datalink();
    let link = LinkLayer::from_dlt(linktype.0).ok_or_else(|| PcapError::LinkType {
        iface: iface.to_owned(),
        linktype: linktype.0,
    })?;
    // Only what arrives: our own outgoing packets are not knocks.
    cap.direction(Direction::In).map_err(open_err)?;
    cap.filter(filter, true)
        .map_err(|source| PcapError::Filter {
            filter: filter.to_owned(),
            source,
        })?;
    let cap = cap.setnonblock().map_err(open_err)?;
    Ok((cap, link))
}

fn read_loop(
    mut cap: PcapHandle<Active>,
    link: LinkLayer,
    iface: &str,
    ifindex: u32,
    prefilter: &SharedPrefilter,
    tx: &mpsc::Sender<Candidate>,
    stops: &[Arc<AtomicBool>; 2],
) {
    while !stops.iter().any(|s| s.load(Ordering::Relaxed)) && !tx.is_closed() {
        // Started before the daemon dropped its privileges: drop this thread's too.
        #[cfg(target_os = "linux")]
        crate::server::privsep::sandbox::catch_up();
        if let Err(err) = wait_readable(&cap) {
            tracing::error!(iface, error = %err, "pcap capture cannot wait for frames, thread stops");
            return;
        }
        let mut p = prefilter.lock();
        let now = p.now_ns();
        for _ in 0..BATCH {
            match cap.next_packet() {
                Ok(packet) => {
                    p.check_link(link, packet.data, Some(ifindex), now, &mut |c| {
                        tx.try_send(c).is_ok()
                    });
                }
                // Non-blocking: the ring is empty.
                Err(pcap::Error::TimeoutExpired) => break,
                Err(err) => {
                    tracing::error!(iface, error = %err, "pcap capture failed, thread stops");
                    return;
                }
            }
        }
    }
}

/// Waits until libpcap's descriptor is readable or [`READ_TIMEOUT_MS`] passed.
fn wait_readable(cap: &PcapHandle<Active>) -> Result<(), Errno> {
    let mut fds = [PollFd::new(cap.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(READ_TIMEOUT_MS)) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_covers_every_port_and_vlan() {
        assert_eq!(
            filter_expression(&[62201]),
            "(udp dst port 62201) or (vlan and (udp dst port 62201))"
        );
        let f = filter_expression(&[1, 2]);
        assert!(f.starts_with("(udp dst port 1 or udp dst port 2)"), "{f}");
    }
}
