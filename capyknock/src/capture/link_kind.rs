//! What kind of link an interface is: a veth, a bridge, a VLAN, ... or none (a physical NIC or
//! another device without a link kind), asked of the kernel with one `RTM_GETLINK` over a
//! blocking rtnetlink socket, in the calling thread's network namespace (not `/sys`, which
//! shows the namespace it was mounted in).
//!
//! `xdp_mode = "auto"` uses it: on a veth it attaches the tc program, because XDP on a veth
//! slows the TCP it passes (in driver mode the peer loses its segmentation offload; in SKB mode
//! every non-linear segment is copied first): docs/PERFORMANCE.md, "Pass-through traffic".

use rtnetlink::{
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Why the kind could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinkKindError {
    /// The netlink socket, or the kernel's answer (no such interface, say).
    #[error("asking the kernel about interface index {index}")]
    Io {
        /// The interface asked about.
        index: u32,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// An answer that does not parse.
    #[error("unreadable netlink answer about interface index {index}: {detail}")]
    Decode {
        /// The interface asked about.
        index: u32,
        /// The decoder's message.
        detail: String,
    },
}

/// The link kind of interface `index` (`Some(InfoKind::Veth)` for a veth), or `None` when the
/// kernel names none (physical NICs, loopback).
pub fn of_index(index: u32) -> Result<Option<InfoKind>, LinkKindError> {
    let io = |source| LinkKindError::Io { index, source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;

    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.header.length as usize];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(io)?;

    let (answer, _) = socket.recv_from_full().map_err(io)?;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer).map_err(|e| {
        LinkKindError::Decode {
            index,
            detail: e.to_string(),
        }
    })?;
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(kind(&link)),
        NetlinkPayload::Error(err) => Err(io(err.to_io())),
        other => Err(LinkKindError::Decode {
            index,
            detail: format!("unexpected message type {}", other.message_type()),
        }),
    }
}

/// The kind named in a link message's `IFLA_LINKINFO`, if any.
fn kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_kind() {
        let lo = crate::capture::ifaces::index("lo").unwrap();
        assert_eq!(of_index(lo).unwrap(), None);
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        // Interface indexes are positive and this one is far beyond any machine's count.
        let err = of_index(0x7fff_fff0).unwrap_err();
        assert!(matches!(err, LinkKindError::Io { .. }), "{err:?}");
    }

    #[test]
    fn the_kind_comes_from_link_info() {
        let mut link = LinkMessage::default();
        assert_eq!(kind(&link), None);
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        assert_eq!(kind(&link), Some(InfoKind::Veth));
    }
}
