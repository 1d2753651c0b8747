//! Raw `AF_PACKET` sockets for the tests that must see or send whole frames: capturing what a
//! namespace receives ([`Sniffer`]) and sending frames no socket API builds
//! ([`send_raw_frame`]). The one module of the test library that needs `unsafe` (libc calls
//! with `sockaddr_ll`).
#![allow(
    unsafe_code,
    reason = "AF_PACKET sockets through libc: the one FFI module of the tests"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use capyknock_testkit::netns::NetNs;

/// Frames received (not sent) on an interface of a namespace, captured with an `AF_PACKET`
/// socket from creation until [`Sniffer::finish`].
#[derive(Debug)]
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    /// Starts capturing everything arriving on `iface` in `ns`.
    #[must_use]
    pub fn start(ns: &NetNs, iface: &str) -> Self {
        let iface = std::ffi::CString::new(iface).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns
            .spawn(move || {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2) call; the result is checked.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
                assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
                // SAFETY: iface is a valid NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                assert!(index > 0, "no interface {iface:?}");
                // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = i32::try_from(index).unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: sll is a valid sockaddr_ll of the size given.
                let rc = unsafe {
                    libc::bind(
                        fd,
                        std::ptr::from_ref(&sll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                // SAFETY: tv is a valid timeval of the size given.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        std::ptr::from_ref(&tv).cast(),
                        std::mem::size_of::<libc::timeval>() as u32,
                    );
                }
                let _ = ready_tx.send(());
                let mut frames = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stopping.load(Ordering::SeqCst) {
                    // SAFETY: an all-zero sockaddr_ll is a valid out-parameter.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: buf and from are valid for the sizes given.
                    let n = unsafe {
                        libc::recvfrom(
                            fd,
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            std::ptr::from_mut(&mut from).cast(),
                            &raw mut len,
                        )
                    };
                    if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                        let n = usize::try_from(n).unwrap_or(0);
                        frames.push(buf[..n].to_vec());
                    }
                }
                // SAFETY: fd is ours and closed once.
                unsafe { libc::close(fd) };
                frames
            })
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("sniffer did not start: {e}"));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns every frame received.
    #[must_use]
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .unwrap_or_default()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw `AF_PACKET` socket sending whole frames out of one interface of the calling thread's
/// network namespace, to the broadcast address; closed on drop.
#[derive(Debug)]
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
    to: libc::sockaddr_ll,
}

impl RawSender {
    /// Opens the socket for interface `iface` (of the calling thread's namespace).
    #[must_use]
    pub fn open(iface: &str) -> Self {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(iface).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor we own; OwnedFd closes it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: `name` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {iface:?}");
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = i32::try_from(index).unwrap_or_else(|e| panic!("{e}"));
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        Self { fd, to }
    }

    /// Sends `frame` (Ethernet header included); whether the kernel took all of it.
    pub fn send(&self, frame: &[u8]) -> bool {
        use std::os::fd::AsRawFd as _;
        // SAFETY: `frame` and `self.to` are valid for the sizes given; the fd is open.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&self.to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        usize::try_from(n).ok() == Some(frame.len())
    }
}

/// Sends `frame` as it is (Ethernet header included) out of `iface` in `ns`: for frames no
/// socket API builds, such as IPv6 with many extension headers.
pub fn send_raw_frame(ns: &NetNs, iface: &str, frame: &[u8]) {
    let iface = iface.to_owned();
    let frame = frame.to_vec();
    ns.run(move || {
        let sent = RawSender::open(&iface).send(&frame);
        assert!(sent, "sendto: {}", std::io::Error::last_os_error());
    })
    .unwrap();
}
