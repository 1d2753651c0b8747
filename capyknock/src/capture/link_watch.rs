//! Following interfaces that come and go while the daemon runs (a new VLAN, a hot-plugged NIC, a
//! container's veth): without this, XDP and pcap capture only ever saw the interfaces that
//! existed at start, so a knock through a new one never reached the daemon, and (under XDP) a
//! probe to the knock port through it reached the network stack.
//!
//! [`LinkWatch`] subscribes to the kernel's link notifications (`RTNLGRP_LINK` on an rtnetlink
//! socket, with the `rtnetlink` crate), then lists every link once (the catch-up scan: a link
//! added between capture's first listing and the subscription is not missed), and turns both into
//! [`LinkEvent`]s. [`IfaceSelector`] says which interfaces the config's `interfaces` asks for
//! (every one when empty, exact names, `prefix*` patterns) and [`decide`] what an event means
//! for the set attached so far. The capture backends do the attaching (`super::Capture::next`).
//!
//! Only root (`CAP_NET_ADMIN`) can add links, so the events are not attacker-controlled input
//! from the network; they are still bounded (one queue of [`QUEUE_LEN`]).

use std::collections::BTreeMap;

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkMessage},
    },
};
use tokio::{sync::mpsc, task::JoinHandle};

/// Link events queued between the watcher task and the capture.
pub const QUEUE_LEN: usize = 256;

pub use super::ifaces::IfaceSelector;

/// Whether a config entry is a pattern (`prefix*`) rather than an interface name.
#[must_use]
pub fn is_pattern(entry: &str) -> bool {
    entry.ends_with('*')
}

/// A change to a network interface, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or its state or name changed).
    Present {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// Administratively up (`IFF_UP`).
        up: bool,
        /// A loopback interface.
        loopback: bool,
    },
    /// A link was removed.
    Removed {
        /// Interface index.
        index: u32,
        /// Interface name, if the message had it.
        name: String,
    },
}

/// What capture should do about a [`LinkEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start capturing on the interface.
    Attach {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
    },
    /// The interface is gone: forget it (its XDP link or pcap handle went with it).
    Forget {
        /// Interface index.
        index: u32,
        /// Interface name, as attached.
        name: String,
    },
    /// Nothing to do.
    Nothing,
}

/// What `event` means for capture, given the interfaces attached so far (index -> name).
/// An interface is attached once it is up and selected, and forgotten when it is removed; one
/// that goes down stays attached (it comes back up with the program still on it).
#[must_use]
pub fn decide(
    selector: &IfaceSelector,
    attached: &BTreeMap<u32, String>,
    event: &LinkEvent,
) -> Action {
    match event {
        LinkEvent::Present {
            index,
            name,
            up,
            loopback,
        } => {
            if *up && !attached.contains_key(index) && selector.matches(name, *loopback) {
                Action::Attach {
                    index: *index,
                    name: name.clone(),
                }
            } else {
                Action::Nothing
            }
        }
        LinkEvent::Removed { index, .. } => match attached.get(index) {
            Some(name) => Action::Forget {
                index: *index,
                name: name.clone(),
            },
            None => Action::Nothing,
        },
    }
}

/// Why the link watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to network interface changes (rtnetlink)")]
pub struct LinkWatchError(#[source] std::io::Error);

/// The kernel's link notifications, plus one listing of every link at start, as
/// [`LinkEvent`]s. Dropping it stops the watch.
#[derive(Debug)]
pub struct LinkWatch {
    rx: mpsc::Receiver<LinkEvent>,
    tasks: [JoinHandle<()>; 2],
}

impl LinkWatch {
    /// Subscribes, then lists the links. Must run inside a tokio runtime.
    pub fn start() -> Result<Self, LinkWatchError> {
        let (conn, handle, mut messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(LinkWatchError)?;
        let conn = tokio::spawn(conn);
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let forward = tokio::spawn(async move {
            // Subscribed already: whatever changes from here on is in `messages` too.
            let mut links = handle.link().get().execute();
            loop {
                match links.try_next().await {
                    Ok(Some(link)) => {
                        if let Some(event) = present(&link)
                            && tx.send(event).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot list the network interfaces");
                        break;
                    }
                }
            }
            while let Some((message, _)) = messages.next().await {
                let event = match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        present(&link)
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        removed(&link)
                    }
                    _ => None,
                };
                if let Some(event) = event
                    && tx.send(event).await.is_err()
                {
                    return;
                }
            }
            tracing::warn!(
                "network interface notifications ended: new interfaces are not followed"
            );
        });
        Ok(Self {
            rx,
            tasks: [conn, forward],
        })
    }

    /// The next event; `None` once the watch ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.rx.recv().await
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Bridge port messages (`AF_BRIDGE`) come and go with bridge membership, not with the link.
fn is_link_message(link: &LinkMessage) -> bool {
    link.header.interface_family == AddressFamily::Unspec
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn present(link: &LinkMessage) -> Option<LinkEvent> {
    if !is_link_message(link) {
        return None;
    }
    Some(LinkEvent::Present {
        index: link.header.index,
        name: name_of(link)?,
        up: link.header.flags.contains(LinkFlags::Up),
        loopback: link.header.flags.contains(LinkFlags::Loopback),
    })
}

fn removed(link: &LinkMessage) -> Option<LinkEvent> {
    if !is_link_message(link) {
        return None;
    }
    Some(LinkEvent::Removed {
        index: link.header.index,
        name: name_of(link).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(list: &[&str]) -> IfaceSelector {
        IfaceSelector::new(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn up(index: u32, name: &str) -> LinkEvent {
        LinkEvent::Present {
            index,
            name: name.to_owned(),
            up: true,
            loopback: false,
        }
    }

    #[test]
    fn selector_all_names_and_patterns() {
        let all = sel(&[]);
        assert!(all.is_all());
        assert!(all.matches("veth7", false));
        assert!(!all.matches("lo", true));

        let named = sel(&["eth0", "lo"]);
        assert!(!named.is_all());
        assert_eq!(named.names(), ["eth0", "lo"]);
        assert!(named.matches("eth0", false));
        assert!(named.matches("lo", true), "loopback when named");
        assert!(!named.matches("eth1", false));
        assert!(!named.matches("eth00", false), "a name is not a prefix");

        let pattern = sel(&["veth*", "eth0.*"]);
        assert!(pattern.names().is_empty());
        assert!(pattern.matches("veth", false));
        assert!(pattern.matches("veth-ck9", false));
        assert!(pattern.matches("eth0.100", false));
        assert!(!pattern.matches("eth0", false));
        assert!(!pattern.matches("xveth", false));
        assert!(
            !sel(&["*"]).matches("lo", true),
            "a pattern never takes loopback"
        );
        assert!(sel(&["*"]).matches("eth3", false));
        assert!(is_pattern("veth*") && !is_pattern("veth0"));
    }

    #[test]
    fn new_matching_up_links_are_attached_once() {
        let s = sel(&[]);
        let mut attached = BTreeMap::new();
        assert_eq!(
            decide(&s, &attached, &up(7, "veth7")),
            Action::Attach {
                index: 7,
                name: "veth7".into()
            }
        );
        attached.insert(7, "veth7".to_owned());
        // The same link again (the catch-up scan, a flag change): nothing.
        assert_eq!(decide(&s, &attached, &up(7, "veth7")), Action::Nothing);
        // Renamed while attached: still attached, nothing to do.
        assert_eq!(decide(&s, &attached, &up(7, "other")), Action::Nothing);
    }

    #[test]
    fn down_loopback_and_unselected_links_are_left_alone() {
        let down = LinkEvent::Present {
            index: 8,
            name: "veth8".into(),
            up: false,
            loopback: false,
        };
        let lo = LinkEvent::Present {
            index: 1,
            name: "lo".into(),
            up: true,
            loopback: true,
        };
        let none = BTreeMap::new();
        assert_eq!(decide(&sel(&[]), &none, &down), Action::Nothing);
        assert_eq!(decide(&sel(&[]), &none, &lo), Action::Nothing);
        assert_eq!(
            decide(&sel(&["eth*"]), &none, &up(9, "veth9")),
            Action::Nothing
        );
        assert_eq!(
            decide(&sel(&["eth0"]), &none, &up(9, "eth1")),
            Action::Nothing
        );
        assert!(matches!(
            decide(&sel(&["eth*"]), &none, &up(9, "eth9")),
            Action::Attach { index: 9, .. }
        ));
        // A named interface that is deleted and created again is followed too.
        assert!(matches!(
            decide(&sel(&["eth1"]), &none, &up(12, "eth1")),
            Action::Attach { index: 12, .. }
        ));
    }

    #[test]
    fn removed_links_are_forgotten_only_if_attached() {
        let mut attached = BTreeMap::new();
        attached.insert(7, "veth7".to_owned());
        let gone = LinkEvent::Removed {
            index: 7,
            name: String::new(),
        };
        assert_eq!(
            decide(&sel(&[]), &attached, &gone),
            Action::Forget {
                index: 7,
                name: "veth7".into()
            }
        );
        let other = LinkEvent::Removed {
            index: 3,
            name: "x".into(),
        };
        assert_eq!(decide(&sel(&[]), &attached, &other), Action::Nothing);
    }

    #[test]
    fn messages_become_events() {
        let mut link = LinkMessage::default();
        link.header.index = 5;
        link.header.flags = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName("veth5".into()));
        assert_eq!(present(&link), Some(up(5, "veth5")));
        assert_eq!(
            removed(&link),
            Some(LinkEvent::Removed {
                index: 5,
                name: "veth5".into()
            })
        );
        // Bridge port messages are not about the link itself.
        link.header.interface_family = AddressFamily::Bridge;
        assert_eq!(present(&link), None);
        assert_eq!(removed(&link), None);
        // No name: not usable.
        let nameless = LinkMessage::default();
        assert_eq!(present(&nameless), None);
    }

    #[tokio::test]
    async fn the_catch_up_scan_lists_loopback() {
        // Every network namespace has `lo`; the scan right after subscribing must report it.
        let mut watch = LinkWatch::start().unwrap();
        let found = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(event) = watch.next().await {
                if let LinkEvent::Present { loopback: true, .. } = event {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found.ok(), Some(true));
    }
}
