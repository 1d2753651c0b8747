//! libpcap capture: the fallback where XDP is unavailable (old kernel, no BPF permission for
//! programs, an interface whose driver refuses XDP).
//!
//! One blocking thread per interface reads frames that match `udp dst port N` (also behind a VLAN
//! tag), runs the userspace pre-filter on each and feeds candidates to a bounded tokio channel.
//! libpcap only copies packets: the network stack still receives them, so the firewall backend
//! must drop the knock port, or the kernel answers with ICMP "port unreachable".

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use pcap::{Active, Capture as PcapHandle, Direction, Linktype};
use tokio::sync::mpsc;

use super::{
    Candidate, CaptureConfig,
    ifaces::{self, IfaceError},
    userspace::{SharedPrefilter, UserPrefilter},
};

/// Candidates queued between the capture threads and [`PcapCapture::next`].
pub const QUEUE_LEN: usize = 1024;
/// Bytes captured per frame: more than any header chain the parser follows plus a knock.
const SNAPLEN: i32 = 8192;
/// How long a read waits before the thread checks whether it should stop.
const READ_TIMEOUT_MS: i32 = 100;

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
    /// Not an Ethernet interface.
    #[error("interface {iface:?} has link type {linktype}, only Ethernet is supported")]
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
    prefilter: SharedPrefilter,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (handle, iface, index) in handles {
            let (shared, tx, stopped) = (prefilter.clone(), tx.clone(), Arc::clone(&stop));
            tracing::info!(iface = %iface, ifindex = index, filter = %filter, "pcap capture on");
            let thread = std::thread::Builder::new()
                .name(format!("pcap-{iface}"))
                .spawn(move || read_loop(handle, &iface, index, &shared, &tx, &stopped));
            match thread {
                Ok(t) => threads.push(t),
                Err(err) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(PcapError::Thread(err));
                }
            }
        }
        Ok(Self {
            rx,
            prefilter,
            stop,
            threads,
        })
    }

    /// The next candidate; `None` once every capture thread ended.
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

fn open_one(iface: &str, filter: &str) -> Result<PcapHandle<Active>, PcapError> {
    let open_err = |source| PcapError::Open {
        iface: iface.to_owned(),
        source,
    };
    let mut cap = PcapHandle::from_device(iface)
        .map_err(open_err)?
        .promisc(false)
        .immediate_mode(true)
        .snaplen(SNAPLEN)
        .timeout(READ_TIMEOUT_MS)
        .open()
        .map_err(open_err)?;
    let linktype = cap.get_datalink();
    if linktype != Linktype::ETHERNET {
        return Err(PcapError::LinkType {
            iface: iface.to_owned(),
            linktype: linktype.0,
        });
    }
    // Only what arrives: our own outgoing packets are not knocks.
    cap.direction(Direction::In).map_err(open_err)?;
    cap.filter(filter, true)
        .map_err(|source| PcapError::Filter {
            filter: filter.to_owned(),
            source,
        })?;
    Ok(cap)
}

fn read_loop(
    mut cap: PcapHandle<Active>,
    iface: &str,
    ifindex: u32,
    prefilter: &SharedPrefilter,
    tx: &mpsc::Sender<Candidate>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        // Started before the daemon dropped its privileges: drop this thread's too.
        crate::server::privsep::sandbox::catch_up();
        match cap.next_packet() {
            Ok(packet) => {
                let mut p = prefilter.lock();
                let now = p.now_ns();
                p.check_frame(packet.data, Some(ifindex), now, &mut |c| {
                    tx.try_send(c).is_ok()
                });
            }
            Err(pcap::Error::TimeoutExpired) => {}
            Err(err) => {
                tracing::error!(iface, error = %err, "pcap capture failed, thread stops");
                return;
            }
        }
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
