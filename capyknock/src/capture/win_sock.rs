//! The Winsock and IP Helper calls capture needs that socket2 and std do not wrap, fenced here
//! so the rest of capture is safe code: `SO_EXCLUSIVEADDRUSE` on the `udp` capture's sockets,
//! `SIO_RCVALL` on the `raw` capture's, and the list of this host's IPv4 addresses
//! (`GetAdaptersAddresses`) the raw sockets are bound to.

use std::{io, net::Ipv4Addr, os::windows::io::AsRawSocket as _, ptr};

use socket2::Socket;
use windows::Win32::{
    NetworkManagement::{
        IpHelper::{
            GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST,
            GetAdaptersAddresses, IP_ADAPTER_ADDRESSES_LH,
        },
        Ndis::IfOperStatusUp,
    },
    Networking::WinSock::{
        AF_INET, RCVALL_IPLEVEL, SIO_RCVALL, SO_EXCLUSIVEADDRUSE, SOCKET, SOL_SOCKET, WSAIoctl,
        getsockopt, setsockopt,
    },
};

/// `ERROR_BUFFER_OVERFLOW`: `GetAdaptersAddresses` wants a larger buffer (the size it needs is
/// written back).
const ERROR_BUFFER_OVERFLOW: u32 = 111;
/// `ERROR_NO_DATA`: no adapter has an address of the family asked for.
const ERROR_NO_DATA: u32 = 232;
/// First buffer for `GetAdaptersAddresses`, as Microsoft's documentation advises (15 KB).
const ADAPTERS_BUFFER: usize = 15 * 1024;
/// Most bytes the adapter list may take: a host with more is misconfigured, not ours to follow.
const ADAPTERS_BUFFER_MAX: usize = 1 << 20;
/// Most adapters and addresses walked (the list is the OS's, but bounded all the same).
const LIST_MAX: usize = 1024;

fn handle(socket: &Socket) -> SOCKET {
    // A SOCKET is a pointer-sized handle; RawSocket (u64) holds it whole on 64-bit Windows.
    SOCKET(socket.as_raw_socket() as usize)
}

/// Binds no other socket to this one's port, whatever options the other asks for
/// (`SO_EXCLUSIVEADDRUSE`). Must be set before `bind`.
pub fn set_exclusive_addr_use(socket: &Socket) -> io::Result<()> {
    let on = 1i32.to_ne_bytes();
    // SAFETY: `socket` is an open socket for the whole call (borrowed), and the option value is
    // a 4-byte BOOL that lives across the call; Winsock copies it.
    let rc = unsafe { setsockopt(handle(socket), SOL_SOCKET, SO_EXCLUSIVEADDRUSE, Some(&on)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `SO_EXCLUSIVEADDRUSE` is set on `socket`.
pub fn exclusive_addr_use(socket: &Socket) -> io::Result<bool> {
    let mut value = [0u8; 4];
    let mut len = 4i32;
    // SAFETY: `socket` is open for the call; `value` is writable for `len` (4) bytes and both
    // live across the call.
    let rc = unsafe {
        getsockopt(
            handle(socket),
            SOL_SOCKET,
            SO_EXCLUSIVEADDRUSE,
            windows::core::PSTR(value.as_mut_ptr()),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(i32::from_ne_bytes(value) != 0)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns on `SIO_RCVALL` at IP level (`RCVALL_IPLEVEL`): the raw socket, bound to one local
/// address, receives every IP packet to that address, without promiscuous mode. Needs
/// Administrator rights.
pub fn receive_all_ip_level(socket: &Socket) -> io::Result<()> {
    // The input is a RCVALL_VALUE, a DWORD.
    let value = RCVALL_IPLEVEL.0.cast_unsigned();
    let mut returned = 0u32;
    // SAFETY: `socket` is open for the call; the input buffer is the 4-byte `value`, which lives
    // across the call; no output buffer and no overlapped I/O (a synchronous call).
    let rc = unsafe {
        WSAIoctl(
            handle(socket),
            SIO_RCVALL,
            Some(ptr::from_ref(&value).cast()),
            4,
            None,
            0,
            &raw mut returned,
            None,
            None,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One IPv4 address of an adapter that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalV4 {
    /// The address.
    pub addr: Ipv4Addr,
    /// The adapter's interface index.
    pub ifindex: u32,
}

/// The IPv4 addresses of every adapter that is up, loopback excluded.
pub fn ipv4_addresses() -> io::Result<Vec<LocalV4>> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    let mut bytes = ADAPTERS_BUFFER;
    loop {
        // u64 words: the list's structures need 8-byte alignment.
        let mut buf = vec![0u64; bytes.div_ceil(8)];
        let mut size = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
        // SAFETY: `buf` is writable for `size` bytes and 8-byte aligned, as the list needs;
        // `size` lives across the call.
        let rc = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_INET.0),
                flags,
                None,
                Some(buf.as_mut_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>()),
                &raw mut size,
            )
        };
        match rc {
            0 => return Ok(walk(&buf)),
            ERROR_NO_DATA => return Ok(Vec::new()),
            ERROR_BUFFER_OVERFLOW
                if (size as usize) > bytes && (size as usize) <= ADAPTERS_BUFFER_MAX =>
            {
                bytes = size as usize;
            }
            other => return Err(io::Error::from_raw_os_error(other.cast_signed())),
        }
    }
}

/// Reads the adapter list `GetAdaptersAddresses` wrote into `buf`.
fn walk(buf: &[u64]) -> Vec<LocalV4> {
    let mut out = Vec::new();
    let mut adapter = buf.as_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>();
    let mut adapters = 0;
    while !adapter.is_null() && adapters < LIST_MAX {
        adapters += 1;
        // SAFETY: the first adapter is at the start of `buf` and every `Next` points into
        // `buf` (the OS wrote the list there); `buf` outlives this function's reads.
        let a = unsafe { &*adapter };
        if a.OperStatus == IfOperStatusUp {
            // SAFETY: both members of this union are plain integers; `IfIndex` is the one the
            // documentation says to read.
            let ifindex = unsafe { a.Anonymous1.Anonymous.IfIndex };
            let mut unicast = a.FirstUnicastAddress;
            let mut addrs = 0;
            while !unicast.is_null() && addrs < LIST_MAX {
                addrs += 1;
                // SAFETY: as for the adapters, the OS's list in `buf`.
                let u = unsafe { &*unicast };
                if let Some(addr) =
                    sockaddr_v4(u.Address.lpSockaddr.cast(), u.Address.iSockaddrLength)
                    && !addr.is_loopback()
                {
                    out.push(LocalV4 { addr, ifindex });
                }
                unicast = u.Next;
            }
        }
        adapter = a.Next;
    }
    out
}

/// The IPv4 address of a `SOCKADDR_IN` of `len` bytes at `sa` (family, port, address).
fn sockaddr_v4(sa: *const u8, len: i32) -> Option<Ipv4Addr> {
    const SOCKADDR_IN_LEN: usize = 16;
    if sa.is_null() || usize::try_from(len).ok()? < SOCKADDR_IN_LEN {
        return None;
    }
    // SAFETY: the OS says `len` (at least 16) bytes are at `sa`, inside the adapter list.
    let raw = unsafe { std::slice::from_raw_parts(sa, SOCKADDR_IN_LEN) };
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    if family != AF_INET.0 {
        return None;
    }
    let octets: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}
