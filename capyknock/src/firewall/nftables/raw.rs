//! The only place that calls libnftnl and the netlink socket directly: what the `nftnl` and
//! `mnl` crates leave out.
//!
//! - [`set_flags`]: named sets with the `timeout` flag (the safe `Set` API sets no flags).
//! - [`ElemList`]: set elements with per-element timeouts, sent as non-exclusive adds (the safe
//!   API only sends `NLM_F_EXCL` adds, which fail with EEXIST on a refresh) or deletes.
//! - [`Load`]: payload and meta loads into a chosen 32-bit register, to build the
//!   `saddr . l4proto . dport` concatenation a set lookup needs (the safe API always loads into
//!   register 1).
//! - [`Netlink`]: sends a batch and waits for every acknowledgement with a receive timeout, and
//!   runs dumps (tables, chains, sets, rules, set elements) so the backend can list its table
//!   back; replies are parsed from bounds-checked bytes before libnftnl sees them.
//!
//! Every `unsafe` block states why it is sound. libnftnl copies every value it is given, so no
//! Rust borrow outlives a call.

use std::{
    ffi::{CStr, CString, c_void},
    io,
    os::raw::c_char,
    ptr::NonNull,
    time::Duration,
};

use nftnl::{
    FinalizedBatch, MsgType, NlMsg, Rule,
    expr::Expression,
    nftnl_sys::{self as sys, libc},
    set::Set,
};

pub use consts::*;

/// libc's netfilter and netlink constants in the integer types libnftnl and the wire use. They
/// are all small non-negative numbers, so the casts are exact.
mod consts {
    use nftnl::nftnl_sys::libc;

    /// `NFT_SET_TIMEOUT`: elements may carry a timeout.
    pub const SET_TIMEOUT: u32 = libc::NFT_SET_TIMEOUT as u32;
    /// `NFPROTO_INET` as a netlink family.
    pub const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;
    /// `meta nfproto` value of IPv4.
    pub const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
    /// `meta nfproto` value of IPv6.
    pub const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
    /// The first 128-bit register (the same storage as 32-bit register 0).
    pub const REG_1: u32 = libc::NFT_REG_1 as u32;
    /// 32-bit register 0; register n is `REG32_00 + n`.
    pub const REG32_00: u32 = libc::NFT_REG32_00 as u32;
    /// Payload base: network header.
    pub const PAYLOAD_NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
    /// Payload base: transport header.
    pub const PAYLOAD_TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;
    /// Meta key: layer 4 protocol.
    pub const META_L4PROTO: u32 = libc::NFT_META_L4PROTO as u32;
    /// Hook number of `input`.
    pub const HOOK_INPUT: u32 = libc::NF_INET_LOCAL_IN as u32;
    pub(super) const MSG_NEWSETELEM: u16 = libc::NFT_MSG_NEWSETELEM as u16;
    pub(super) const MSG_DELSETELEM: u16 = libc::NFT_MSG_DELSETELEM as u16;
    pub(super) const MSG_GETTABLE: u16 = libc::NFT_MSG_GETTABLE as u16;
    pub(super) const MSG_GETCHAIN: u16 = libc::NFT_MSG_GETCHAIN as u16;
    pub(super) const MSG_GETSET: u16 = libc::NFT_MSG_GETSET as u16;
    pub(super) const MSG_GETRULE: u16 = libc::NFT_MSG_GETRULE as u16;
    pub(super) const MSG_GETSETELEM: u16 = libc::NFT_MSG_GETSETELEM as u16;
    pub(super) const F_ACK: u16 = libc::NLM_F_ACK as u16;
    pub(super) const F_CREATE: u16 = libc::NLM_F_CREATE as u16;
    pub(super) const F_DUMP: u16 = libc::NLM_F_DUMP as u16;
    pub(super) const F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
    pub(super) const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
    pub(super) const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
}

/// Elements per set-element message. A message must stay under 64 KiB (the element list is one
/// netlink attribute with a 16-bit length); an element with a 24-byte key, a timeout and an
/// owner comment (at most [`MAX_USERDATA`] bytes) takes at most 136 bytes, so 400 take about
/// 53 KiB.
pub const MAX_ELEMS_PER_MSG: usize = 400;

/// Longest element user data we write (nft's own limit is 256 bytes).
pub const MAX_USERDATA: usize = 80;

/// The user data type nft reads as an element's comment (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const UDATA_SET_ELEM_COMMENT: u8 = 0;

/// Encodes `comment` as element user data the way nft does (type, length, the string and its
/// NUL), so `nft list` shows it as the element's `comment`. `None` if it does not fit.
#[must_use]
pub fn comment_userdata(comment: &str) -> Option<Vec<u8>> {
    let len = comment.len().checked_add(1)?;
    if comment.contains('\0') || len.checked_add(2)? > MAX_USERDATA {
        return None;
    }
    let mut out = Vec::with_capacity(len + 2);
    out.push(UDATA_SET_ELEM_COMMENT);
    out.push(u8::try_from(len).ok()?);
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Some(out)
}

/// The comment in element user data written by [`comment_userdata`] (or by nft); `None` when
/// there is none or it is malformed.
#[must_use]
pub fn userdata_comment(mut data: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = data {
        let value = rest.get(..usize::from(*len))?;
        if *ty == UDATA_SET_ELEM_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        data = rest.get(usize::from(*len)..)?;
    }
    None
}

/// Receive buffer room per expected acknowledgement (an ack is a small skb, but the socket
/// accounts its whole allocation).
const RCVBUF_PER_ACK: usize = 1024;

/// How long to wait for the kernel to answer a request.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// `nlmsghdr` size.
const NLMSG_HDRLEN: usize = 16;

/// Aborts on allocation failure, as the `nftnl` crate does: libnftnl returns NULL only when
/// malloc fails for a few bytes.
fn alloc<T>(ptr: *mut T) -> NonNull<T> {
    match NonNull::new(ptr) {
        Some(p) => p,
        None => std::process::abort(),
    }
}

/// Sets a set's `NFTNL_SET_FLAGS` (e.g. [`SET_TIMEOUT`]) before it is added to a batch.
pub fn set_flags<K>(set: &Set<'_, K>, flags: u32) {
    // SAFETY: `as_ptr` is the live nftnl_set owned by `set`; the setter stores a copy of the
    // integer.
    unsafe { sys::nftnl_set_set_u32(set.as_ptr().as_ptr(), sys::NFTNL_SET_FLAGS as u16, flags) };
}

/// A payload or meta load into a given register (`NFT_REG_1`, or `NFT_REG32_00 + n` for the
/// n-th 32-bit register of a concatenation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// `len` bytes at `offset` of a header (`NFT_PAYLOAD_*_HEADER`).
    Payload {
        /// Header base.
        base: u32,
        /// Byte offset.
        offset: u32,
        /// Byte length.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// A meta key (`NFT_META_*`).
    Meta {
        /// Meta key.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
}

impl Expression for Load {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        match *self {
            Load::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                // SAFETY: the name is a NUL-terminated literal; libnftnl copies it.
                let expr = alloc(unsafe { sys::nftnl_expr_alloc(c"payload".as_ptr()) });
                // SAFETY: `expr` is a live payload expression; the setters copy integers.
                unsafe {
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, len);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, dreg);
                }
                expr
            }
            Load::Meta { key, dreg } => {
                // SAFETY: as above.
                let expr = alloc(unsafe { sys::nftnl_expr_alloc(c"meta".as_ptr()) });
                // SAFETY: `expr` is a live meta expression; the setters copy integers.
                unsafe {
                    let e = expr.as_ptr();
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, dreg);
                }
                expr
            }
        }
    }
}

/// Set elements of one set, to add (non-exclusively: an existing element is not an error) or
/// delete in a batch. At most [`MAX_ELEMS_PER_MSG`] elements.
#[derive(Debug)]
pub struct ElemList {
    set: NonNull<sys::nftnl_set>,
    family: u16,
    len: usize,
}

// SAFETY: the nftnl_set is owned exclusively by this value and only used through `&self`/`&mut
// self`; libnftnl keeps no thread-local state for it.
unsafe impl Send for ElemList {}

impl ElemList {
    /// An empty list for set `set` of table `table` in `family` (`NFPROTO_*`).
    #[must_use]
    pub fn new(table: &CStr, set: &CStr, family: u16) -> Self {
        // SAFETY: plain allocation.
        let ptr = alloc(unsafe { sys::nftnl_set_alloc() });
        // SAFETY: `ptr` is a live nftnl_set; the string setters copy the NUL-terminated strings.
        unsafe {
            sys::nftnl_set_set_str(ptr.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(ptr.as_ptr(), sys::NFTNL_SET_NAME as u16, set.as_ptr());
            sys::nftnl_set_set_u32(
                ptr.as_ptr(),
                sys::NFTNL_SET_FAMILY as u16,
                u32::from(family),
            );
        }
        Self {
            set: ptr,
            family,
            len: 0,
        }
    }

    /// Adds an element with key bytes `key`, an optional timeout in milliseconds and optional
    /// user data (at most [`MAX_USERDATA`] bytes; longer is left out).
    pub fn push(&mut self, key: &[u8], timeout_ms: Option<u64>, userdata: Option<&[u8]>) {
        // SAFETY: plain allocation.
        let elem = alloc(unsafe { sys::nftnl_set_elem_alloc() });
        let key_len = u32::try_from(key.len()).unwrap_or(0);
        // SAFETY: `elem` is live; nftnl_set_elem_set copies `key_len` bytes from `key`, which is
        // valid for that many bytes. nftnl_set_elem_add transfers ownership of `elem` to the
        // set, which frees it in nftnl_set_free.
        unsafe {
            sys::nftnl_set_elem_set(
                elem.as_ptr(),
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr().cast::<c_void>(),
                key_len,
            );
            if let Some(ms) = timeout_ms {
                sys::nftnl_set_elem_set_u64(elem.as_ptr(), sys::NFTNL_SET_ELEM_TIMEOUT as u16, ms);
            }
            // SAFETY (of the call below): as for the key, `data` is valid for `len` bytes and
            // copied.
            if let Some(data) = userdata.filter(|d| d.len() <= MAX_USERDATA) {
                sys::nftnl_set_elem_set(
                    elem.as_ptr(),
                    sys::NFTNL_SET_ELEM_USERDATA as u16,
                    data.as_ptr().cast::<c_void>(),
                    u32::try_from(data.len()).unwrap_or(0),
                );
            }
            sys::nftnl_set_elem_add(self.set.as_ptr(), elem.as_ptr());
        }
        self.len = self.len.saturating_add(1);
    }

    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for ElemList {
    fn drop(&mut self) {
        // SAFETY: we own the set and its elements; nothing else holds the pointer.
        unsafe { sys::nftnl_set_free(self.set.as_ptr()) };
    }
}

// SAFETY: at most MAX_ELEMS_PER_MSG elements of at most 24-byte keys (enforced by the backend,
// checked in debug builds) serialize to under 64 KiB, less than nft_nlmsg_maxsize().
unsafe impl NlMsg for ElemList {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        debug_assert!(self.len <= MAX_ELEMS_PER_MSG, "element list too long");
        let (ty, flags) = match msg_type {
            // No NLM_F_EXCL: adding an element that exists succeeds (and, on kernels from 6.12,
            // refreshes its timeout). The backend sends add, delete, add to refresh everywhere.
            MsgType::Add => (MSG_NEWSETELEM, F_CREATE | F_ACK),
            MsgType::Del => (MSG_DELSETELEM, F_ACK),
        };
        // SAFETY: the caller (nftnl::Batch) passes a buffer of nft_nlmsg_maxsize() bytes; our
        // set is live.
        unsafe {
            let header =
                sys::nftnl_nlmsg_build_hdr(buf.cast::<c_char>(), ty, self.family, flags, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(header, self.set.as_ptr());
        }
    }
}

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or used.
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    /// The kernel rejected a message of a batch.
    #[error("the kernel refused {what}")]
    Refused {
        /// What the message did.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// No answer in time.
    #[error("netlink did not answer within {0:?}")]
    Timeout(Duration),
    /// A reply we cannot read.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno of a refusal.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A netfilter netlink socket (opened in the calling thread's network namespace).
pub struct Netlink {
    socket: mnl::Socket,
    portid: u32,
    buf: Vec<u8>,
    seq: u32,
}

// SAFETY: an mnl_socket is an fd plus its bound address; libmnl keeps no thread-affine state,
// and the socket stays in the network namespace it was opened in whichever thread uses it.
// `&mut self` on every use serializes access.
unsafe impl Send for Netlink {}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("portid", &self.portid)
            .finish_non_exhaustive()
    }
}

/// One parsed netlink reply message.
struct Reply<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    /// The whole message, header included, aligned for `nlmsghdr`.
    bytes: &'a [u8],
}

/// Splits a receive buffer into messages, checking every length against the buffer.
fn split_replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let word = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
        let half = |at: usize| -> Option<[u8; 2]> { buf.get(at..at + 2)?.try_into().ok() };
        let (Some(len), Some(ty), Some(flags), Some(seq)) = (word(0), half(4), half(6), word(8))
        else {
            return Err(NetlinkError::Malformed("short header"));
        };
        let len = u32::from_ne_bytes(len) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetlinkError::Malformed("bad message length"));
        }
        let Some(bytes) = buf.get(..len) else {
            return Err(NetlinkError::Malformed("bad message length"));
        };
        out.push(Reply {
            ty: u16::from_ne_bytes(ty),
            flags: u16::from_ne_bytes(flags),
            seq: u32::from_ne_bytes(seq),
            bytes,
        });
        let padded = len.next_multiple_of(4).min(buf.len());
        buf = buf.get(padded..).unwrap_or_default();
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` reply (0 for an acknowledgement).
fn error_code(reply: &Reply<'_>) -> Result<i32, NetlinkError> {
    let code = reply
        .bytes
        .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or(NetlinkError::Malformed("short error message"))?;
    Ok(i32::from_ne_bytes(code).saturating_neg())
}

impl Netlink {
    /// Opens a socket to netfilter with a receive timeout.
    pub fn open() -> Result<Self, NetlinkError> {
        let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NetlinkError::Socket)?;
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(2),
            tv_usec: libc::suseconds_t::from(RECV_TIMEOUT.subsec_micros()),
        };
        // SAFETY: the fd belongs to the live socket; setsockopt reads `size_of::<timeval>()`
        // bytes from `tv`, which lives across the call.
        let rc = unsafe {
            let fd = mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket());
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast::<c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        let one: libc::c_int = 1;
        // SAFETY: as above, reading one c_int. NETLINK_CAP_ACK makes error replies carry only
        // the failing message's header, not its whole payload; if the kernel lacks it,
        // replies are just larger.
        unsafe {
            let fd = mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket());
            libc::setsockopt(
                fd,
                libc::SOL_NETLINK,
                libc::NETLINK_CAP_ACK,
                (&raw const one).cast::<c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let portid = socket.portid();
        // A little more than the largest netlink message, so the slice can start aligned.
        let buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize + 8];
        Ok(Self {
            socket,
            portid,
            buf,
            seq: 0x4000_0000,
        })
    }

    /// Discards replies left from an earlier failed request (the kernel queues every reply of
    /// a batch before `sendmsg` returns, so after an error some may remain).
    fn drain(&mut self) {
        let fd = self.fd();
        let (ptr, len) = (self.buf.as_mut_ptr().cast::<c_void>(), self.buf.len());
        // SAFETY: `recv` writes at most `len` bytes into our buffer, which is valid for that many.
        while unsafe { libc::recv(fd, ptr, len, libc::MSG_DONTWAIT) } > 0 {}
    }

    /// Receives one datagram into the aligned part of the buffer; returns (start, len).
    fn recv(&mut self) -> Result<(usize, usize), NetlinkError> {
        let start = self
            .buf
            .as_ptr()
            .align_offset(std::mem::align_of::<libc::nlmsghdr>());
        let Some(area) = self.buf.get_mut(start..) else {
            return Err(NetlinkError::Malformed("receive buffer"));
        };
        match self.socket.recv_raw(area) {
            Ok(n) => Ok((start, n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(NetlinkError::Timeout(RECV_TIMEOUT))
            }
            Err(e) => Err(NetlinkError::Socket(e)),
        }
    }

    /// Sends a batch and waits until the kernel acknowledged every message. `labels[i]` says
    /// what the i-th message (after the batch-begin) does, for the error.
    pub fn send_batch(
        &mut self,
        batch: &FinalizedBatch,
        labels: &[String],
    ) -> Result<(), NetlinkError> {
        self.drain();
        let pages: Vec<&[u8]> = batch.iter().collect();
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let seqs = batch.sequence_numbers();
        self.grow_buffers(total, seqs.len());
        self.send_pages(&pages, total)?;
        let mut pending: std::collections::BTreeSet<u32> = seqs.clone().collect();
        // Kernels from 6.10 also acknowledge the begin and end messages.
        let acked_begin = pending.len() > labels.len();
        let first_msg = seqs.start.saturating_add(u32::from(acked_begin));
        while !pending.is_empty() {
            let (start, n) = self.recv()?;
            let area = self.buf.get(start..start + n).unwrap_or_default();
            for reply in split_replies(area)? {
                if reply.ty != NLMSG_ERROR || !pending.contains(&reply.seq) {
                    continue;
                }
                let errno = error_code(&reply)?;
                if errno != 0 {
                    let index = reply.seq.wrapping_sub(first_msg) as usize;
                    let what = labels
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| "the batch".to_owned());
                    return Err(NetlinkError::Refused {
                        what,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                pending.remove(&reply.seq);
            }
        }
        Ok(())
    }

    fn fd(&self) -> libc::c_int {
        // SAFETY: the socket is live for `self`'s lifetime.
        unsafe { mnl::mnl_sys::mnl_socket_get_fd(self.socket.as_raw_socket()) }
    }

    fn sockopt(&self, name: libc::c_int) -> usize {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast::<c_void>(),
                &raw mut len,
            )
        };
        if rc == 0 {
            usize::try_from(value).unwrap_or(0)
        } else {
            0
        }
    }

    fn set_sockopt(&self, name: libc::c_int, value: usize) -> bool {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `value`, which lives across
        // the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                name,
                (&raw const value).cast::<c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    /// Makes the socket buffers large enough for a batch of `bytes` (sent as one datagram) and
    /// its `acks` acknowledgements, as `nft` does. The FORCE variants need `CAP_NET_ADMIN`, which
    /// changing nftables needs anyway; without it the plain limits apply.
    fn grow_buffers(&self, bytes: usize, acks: usize) {
        let want_snd = bytes.saturating_add(64 * 1024);
        if self.sockopt(libc::SO_SNDBUF) < want_snd
            && !self.set_sockopt(libc::SO_SNDBUFFORCE, want_snd)
        {
            self.set_sockopt(libc::SO_SNDBUF, want_snd);
        }
        let want_rcv = acks
            .saturating_mul(RCVBUF_PER_ACK)
            .saturating_add(256 * 1024);
        if self.sockopt(libc::SO_RCVBUF) < want_rcv
            && !self.set_sockopt(libc::SO_RCVBUFFORCE, want_rcv)
        {
            self.set_sockopt(libc::SO_RCVBUF, want_rcv);
        }
    }

    /// Sends the batch pages as ONE datagram (`sendmsg` with an iovec per page): the kernel
    /// only treats messages in one datagram as one transaction.
    fn send_pages(&self, pages: &[&[u8]], total: usize) -> Result<(), NetlinkError> {
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast::<c_void>(),
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: all-zero is a valid sockaddr_nl and msghdr.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut addr).cast::<c_void>();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: `msg` points at `addr` and `iov`, and every iovec at a page of the batch; all
        // live across the call, and sendmsg only reads them.
        let sent = unsafe { libc::sendmsg(self.fd(), &raw const msg, 0) };
        match usize::try_from(sent) {
            Ok(n) if n == total => Ok(()),
            Ok(_) => Err(NetlinkError::Socket(io::Error::other("short netlink send"))),
            Err(_) => Err(NetlinkError::Socket(io::Error::last_os_error())),
        }
    }

    /// Runs a dump: `build` writes the payload of the request whose header is given, `each` is
    /// called with every reply message (a valid, aligned `nlmsghdr` with its payload).
    fn dump(
        &mut self,
        msg_type: u16,
        build: impl FnOnce(*mut libc::nlmsghdr),
        mut each: impl FnMut(&libc::nlmsghdr),
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize + 8];
        let start = req
            .as_ptr()
            .align_offset(std::mem::align_of::<libc::nlmsghdr>());
        let Some(area) = req.get_mut(start..) else {
            return Err(NetlinkError::Malformed("request buffer"));
        };
        // SAFETY: `area` is at least nft_nlmsg_maxsize() bytes, aligned for nlmsghdr, and
        // outlives the calls; libnftnl writes one header and a small payload into it.
        let len = unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                area.as_mut_ptr().cast::<c_char>(),
                msg_type,
                FAMILY_INET,
                F_DUMP,
                seq,
            );
            build(header);
            (*header).nlmsg_len as usize
        };
        let msg = area
            .get(..len)
            .ok_or(NetlinkError::Malformed("request length"))?;
        self.drain();
        self.socket.send(msg).map_err(NetlinkError::Socket)?;
        loop {
            let (start, n) = self.recv()?;
            let area = self.buf.get(start..start + n).unwrap_or_default();
            for reply in split_replies(area)? {
                if reply.seq != seq {
                    continue;
                }
                if reply.flags & F_DUMP_INTR != 0 {
                    return Err(NetlinkError::Refused {
                        what: "a listing (the ruleset changed meanwhile)".to_owned(),
                        source: io::Error::from_raw_os_error(libc::EINTR),
                    });
                }
                match reply.ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = error_code(&reply)?;
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(NetlinkError::Refused {
                            what: "a listing".to_owned(),
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    _ => {
                        let ptr = reply.bytes.as_ptr();
                        if ptr.align_offset(std::mem::align_of::<libc::nlmsghdr>()) != 0 {
                            return Err(NetlinkError::Malformed("unaligned message"));
                        }
                        #[expect(clippy::cast_ptr_alignment, reason = "alignment checked above")]
                        let ptr = ptr.cast::<libc::nlmsghdr>();
                        // SAFETY: `split_replies` checked that the message is at least a header
                        // long and lies within the buffer, and `ptr` is aligned (checked above),
                        // so this reference is valid while the buffer is borrowed here.
                        let header = unsafe { &*ptr };
                        each(header);
                    }
                }
            }
        }
    }

    /// Tables of the inet family: (name, flags).
    pub fn tables(&mut self) -> Result<Vec<(String, u32)>, NetlinkError> {
        let mut out = Vec::new();
        self.dump(
            MSG_GETTABLE,
            |_| {},
            |nlh| {
                let t = Owned::table();
                // SAFETY: `nlh` is a valid netlink message (see `dump`); `t` is live. The string
                // getter returns NULL or a pointer into `t`, read before `t` is freed.
                unsafe {
                    if sys::nftnl_table_nlmsg_parse(nlh, t.0.as_ptr()) < 0 {
                        return;
                    }
                    let name = cstr(sys::nftnl_table_get_str(
                        t.0.as_ptr(),
                        sys::NFTNL_TABLE_NAME as u16,
                    ));
                    let flags =
                        sys::nftnl_table_get_u32(t.0.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16);
                    if let Some(name) = name {
                        out.push((name, flags));
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// Chains of `table` (inet): (name, hook number and priority for base chains).
    pub fn chains(&mut self, table: &CStr) -> Result<Vec<ChainInfo>, NetlinkError> {
        let mut out = Vec::new();
        let want = table.to_string_lossy().into_owned();
        self.dump(
            MSG_GETCHAIN,
            |_| {},
            |nlh| {
                let c = Owned::chain();
                // SAFETY: as in `tables`.
                unsafe {
                    let p = c.0.as_ptr();
                    if sys::nftnl_chain_nlmsg_parse(nlh, p) < 0 {
                        return;
                    }
                    let table = cstr(sys::nftnl_chain_get_str(p, sys::NFTNL_CHAIN_TABLE as u16));
                    let name = cstr(sys::nftnl_chain_get_str(p, sys::NFTNL_CHAIN_NAME as u16));
                    let hook =
                        sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_HOOKNUM as u16).then(|| {
                            (
                                sys::nftnl_chain_get_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16),
                                sys::nftnl_chain_get_s32(p, sys::NFTNL_CHAIN_PRIO as u16),
                            )
                        });
                    if let (Some(table), Some(name)) = (table, name)
                        && table == want
                    {
                        out.push(ChainInfo { name, hook });
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// Sets of `table` (inet).
    pub fn sets(&mut self, table: &CStr) -> Result<Vec<SetInfo>, NetlinkError> {
        let mut out = Vec::new();
        let want = table.to_string_lossy().into_owned();
        let filter = Owned::set();
        // SAFETY: `filter` is live; the setter copies the string.
        unsafe {
            sys::nftnl_set_set_str(
                filter.0.as_ptr(),
                sys::NFTNL_SET_TABLE as u16,
                table.as_ptr(),
            )
        };
        self.dump(
            MSG_GETSET,
            // SAFETY: `header` points into the request buffer with room for the payload.
            |header| unsafe { sys::nftnl_set_nlmsg_build_payload(header, filter.0.as_ptr()) },
            |nlh| {
                let s = Owned::set();
                // SAFETY: as in `tables`.
                unsafe {
                    let p = s.0.as_ptr();
                    if sys::nftnl_set_nlmsg_parse(nlh, p) < 0 {
                        return;
                    }
                    let table = cstr(sys::nftnl_set_get_str(p, sys::NFTNL_SET_TABLE as u16));
                    let name = cstr(sys::nftnl_set_get_str(p, sys::NFTNL_SET_NAME as u16));
                    let flags = sys::nftnl_set_get_u32(p, sys::NFTNL_SET_FLAGS as u16);
                    let key_len = sys::nftnl_set_get_u32(p, sys::NFTNL_SET_KEY_LEN as u16);
                    if let (Some(table), Some(name)) = (table, name)
                        && table == want
                    {
                        out.push(SetInfo {
                            name,
                            flags,
                            key_len,
                        });
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// The chain name of every rule in `table` (inet), in order.
    pub fn rules(&mut self, table: &CStr) -> Result<Vec<String>, NetlinkError> {
        let mut out = Vec::new();
        let want = table.to_string_lossy().into_owned();
        let filter = Owned::rule();
        // SAFETY: `filter` is live; the setter copies the string.
        unsafe {
            sys::nftnl_rule_set_str(
                filter.0.as_ptr(),
                sys::NFTNL_RULE_TABLE as u16,
                table.as_ptr(),
            )
        };
        self.dump(
            MSG_GETRULE,
            // SAFETY: as in `sets`.
            |header| unsafe { sys::nftnl_rule_nlmsg_build_payload(header, filter.0.as_ptr()) },
            |nlh| {
                let r = Owned::rule();
                // SAFETY: as in `tables`.
                unsafe {
                    let p = r.0.as_ptr();
                    if sys::nftnl_rule_nlmsg_parse(nlh, p) < 0 {
                        return;
                    }
                    let table = cstr(sys::nftnl_rule_get_str(p, sys::NFTNL_RULE_TABLE as u16));
                    let chain = cstr(sys::nftnl_rule_get_str(p, sys::NFTNL_RULE_CHAIN as u16));
                    if let (Some(table), Some(chain)) = (table, chain)
                        && table == want
                    {
                        out.push(chain);
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// Elements of set `set` in `table` (inet): key bytes and, when the element has a
    /// timeout, the milliseconds left before it expires.
    pub fn elements(&mut self, table: &CStr, set: &CStr) -> Result<Vec<ElemInfo>, NetlinkError> {
        let mut out = Vec::new();
        let filter = ElemList::new(table, set, FAMILY_INET);
        self.dump(
            MSG_GETSETELEM,
            // SAFETY: as in `sets`; the list is empty, so only table and set names are written.
            |header| unsafe {
                sys::nftnl_set_elems_nlmsg_build_payload(header, filter.set.as_ptr());
            },
            |nlh| {
                let s = Owned::set();
                // SAFETY: as in `tables`; the iterator and the elements it yields belong to `s`
                // and are used before it is freed; `nftnl_set_elem_get` returns a pointer to
                // `len` bytes inside the element.
                unsafe {
                    let p = s.0.as_ptr();
                    if sys::nftnl_set_elems_nlmsg_parse(nlh, p) < 0 {
                        return;
                    }
                    let Some(iter) = NonNull::new(sys::nftnl_set_elems_iter_create(p)) else {
                        return;
                    };
                    let mut elem = sys::nftnl_set_elems_iter_cur(iter.as_ptr());
                    while !elem.is_null() {
                        let mut len = 0u32;
                        let data = sys::nftnl_set_elem_get(
                            elem,
                            sys::NFTNL_SET_ELEM_KEY as u16,
                            &raw mut len,
                        );
                        if !data.is_null() {
                            let key = std::slice::from_raw_parts(data.cast::<u8>(), len as usize)
                                .to_vec();
                            let has_timeout = sys::nftnl_set_elem_is_set(
                                elem,
                                sys::NFTNL_SET_ELEM_TIMEOUT as u16,
                            );
                            let expires_ms = has_timeout.then(|| {
                                sys::nftnl_set_elem_get_u64(
                                    elem,
                                    sys::NFTNL_SET_ELEM_EXPIRATION as u16,
                                )
                            });
                            let mut ulen = 0u32;
                            let udata = sys::nftnl_set_elem_get(
                                elem,
                                sys::NFTNL_SET_ELEM_USERDATA as u16,
                                &raw mut ulen,
                            );
                            let userdata = (!udata.is_null()).then(|| {
                                std::slice::from_raw_parts(udata.cast::<u8>(), ulen as usize)
                                    .to_vec()
                            });
                            out.push(ElemInfo {
                                key,
                                expires_ms,
                                userdata,
                            });
                        }
                        elem = sys::nftnl_set_elems_iter_next(iter.as_ptr());
                    }
                    sys::nftnl_set_elems_iter_destroy(iter.as_ptr());
                }
            },
        )?;
        Ok(out)
    }
}

/// A chain as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// Name.
    pub name: String,
    /// Hook number and priority (base chains).
    pub hook: Option<(u32, i32)>,
}

/// A set as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// Name.
    pub name: String,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// Key length in bytes.
    pub key_len: u32,
}

/// A set element as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElemInfo {
    /// Key bytes.
    pub key: Vec<u8>,
    /// Milliseconds until it expires; `None` without a timeout.
    pub expires_ms: Option<u64>,
    /// The element's user data (nft shows a comment), if any.
    pub userdata: Option<Vec<u8>>,
}

/// Copies a C string owned by libnftnl; `None` for NULL or non-UTF-8.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string alive for the call.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the caller.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// A libnftnl object freed on drop.
struct Owned<T: Free>(NonNull<T>);

trait Free {
    /// # Safety
    /// `p` is a live object of this type, not used afterwards.
    unsafe fn free(p: *mut Self);
}

impl Free for sys::nftnl_table {
    unsafe fn free(p: *mut Self) {
        // SAFETY: per the trait contract.
        unsafe { sys::nftnl_table_free(p) }
    }
}
impl Free for sys::nftnl_chain {
    unsafe fn free(p: *mut Self) {
        // SAFETY: per the trait contract.
        unsafe { sys::nftnl_chain_free(p) }
    }
}
impl Free for sys::nftnl_set {
    unsafe fn free(p: *mut Self) {
        // SAFETY: per the trait contract.
        unsafe { sys::nftnl_set_free(p) }
    }
}
impl Free for sys::nftnl_rule {
    unsafe fn free(p: *mut Self) {
        // SAFETY: per the trait contract.
        unsafe { sys::nftnl_rule_free(p) }
    }
}

impl<T: Free> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: we own the object and drop it once.
        unsafe { T::free(self.0.as_ptr()) }
    }
}

impl Owned<sys::nftnl_table> {
    fn table() -> Self {
        // SAFETY: plain allocation.
        Self(alloc(unsafe { sys::nftnl_table_alloc() }))
    }
}
impl Owned<sys::nftnl_chain> {
    fn chain() -> Self {
        // SAFETY: plain allocation.
        Self(alloc(unsafe { sys::nftnl_chain_alloc() }))
    }
}
impl Owned<sys::nftnl_set> {
    fn set() -> Self {
        // SAFETY: plain allocation.
        Self(alloc(unsafe { sys::nftnl_set_alloc() }))
    }
}
impl Owned<sys::nftnl_rule> {
    fn rule() -> Self {
        // SAFETY: plain allocation.
        Self(alloc(unsafe { sys::nftnl_rule_alloc() }))
    }
}

/// A `CString` from a name we validated (letters, digits, `_`, `-`): never contains NUL.
#[must_use]
pub fn name(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_as_nft_writes_them() {
        let data = comment_userdata("capyknock:0101:alice").unwrap();
        assert_eq!(&data[..2], &[0, 21]);
        assert_eq!(data.last(), Some(&0));
        assert_eq!(
            userdata_comment(&data).as_deref(),
            Some("capyknock:0101:alice")
        );
        // Other attributes before the comment are skipped; truncated data is refused.
        let mut with_other = vec![7, 2, 1, 2];
        with_other.extend_from_slice(&data);
        assert_eq!(
            userdata_comment(&with_other).as_deref(),
            Some("capyknock:0101:alice")
        );
        assert_eq!(userdata_comment(&data[..5]), None);
        assert_eq!(userdata_comment(&[]), None);
        assert!(comment_userdata(&"x".repeat(MAX_USERDATA)).is_none());
        assert!(comment_userdata("a\0b").is_none());
    }

    proptest::proptest! {
        #[test]
        fn userdata_parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = userdata_comment(&bytes);
        }
    }

    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&7u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn splits_and_reads_errors() {
        let mut buf = msg(libc::NLMSG_ERROR as u16, 0, 5, &(-17i32).to_ne_bytes());
        buf.extend(msg(libc::NLMSG_DONE as u16, 0, 6, &[1, 2, 3]));
        let replies = split_replies(&buf).unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].seq, 5);
        assert_eq!(error_code(&replies[0]).unwrap(), 17);
        assert_eq!(replies[1].ty, libc::NLMSG_DONE as u16);
        assert!(
            error_code(&replies[1]).is_err(),
            "3-byte payload is too short for an errno"
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = msg(2, 0, 1, &[0; 4]);
        buf[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(split_replies(&buf).is_err());
        buf[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(split_replies(&buf).is_err());
        assert!(split_replies(&[0u8; 7]).unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(replies) = split_replies(&bytes) {
                for r in &replies {
                    let _ = error_code(r);
                }
            }
        }
    }

    #[test]
    fn elem_list_serializes_without_excl() {
        let mut list = ElemList::new(c"capyknock", c"allow4", libc::NFPROTO_INET as u16);
        list.push(&[10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0], Some(1500), None);
        assert_eq!(list.len(), 1);
        let mut buf = vec![0u64; (nftnl::nft_nlmsg_maxsize() as usize).div_ceil(8)];
        // SAFETY: the buffer has nft_nlmsg_maxsize() bytes.
        unsafe { list.write(buf.as_mut_ptr().cast::<c_void>(), 9, MsgType::Add) };
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let replies =
            split_replies(&bytes[..u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize])
                .unwrap();
        let r = &replies[0];
        assert_eq!(
            r.ty,
            ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWSETELEM as u16
        );
        assert_eq!(
            r.flags & libc::NLM_F_EXCL as u16,
            0,
            "a refresh must not fail with EEXIST"
        );
        assert_ne!(r.flags & libc::NLM_F_CREATE as u16, 0);
        assert_eq!(r.seq, 9);
        // The key and the 1500 ms timeout (big-endian u64) are in the payload.
        let payload = r.bytes;
        assert!(
            payload
                .windows(12)
                .any(|w| w == [10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0])
        );
        assert!(payload.windows(8).any(|w| w == 1500u64.to_be_bytes()));
    }
}
