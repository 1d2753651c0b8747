//! The Windows Firewall rules capyknock wants, as plain data: compiled and tested on every
//! platform; `windows.rs` only applies them through the COM API.
//!
//! Every rule is inbound, in the group `capyknock`, and named `capyknock ...` so we can find
//! ours and never touch anyone else's: `capyknock grant tcp/22 192.0.2.1` allows one address to
//! one port; `capyknock ban tcp 192.0.2.1` blocks one address on every protected port of one
//! protocol (Windows applies block rules before allow rules, so a ban beats a grant). Windows
//! blocks unsolicited inbound traffic by default, so no "drop everything else" rule is needed,
//! but no other rule may allow the protected ports (see docs/FIREWALL.md).
//!
//! Windows rules have no timeout: the facade's ledger expires them on the daemon's timer and
//! is persisted in the state directory, so a restart still removes what expired meanwhile.
//! With `keep_established`, an expired TCP grant stays while an established connection from
//! its address to its port exists ([`in_use`]).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::model::{GrantKey, Ledger};
use crate::ports::{PortSpec, Protocol};

/// Prefix of every rule name we create (followed by a space).
pub const RULE_PREFIX: &str = "capyknock";

/// Rule group shown in the Windows Firewall console.
pub const RULE_GROUP: &str = "capyknock";

/// One inbound rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleSpec {
    /// Unique name, starting with `capyknock `.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Allow (grant) or block (ban).
    pub allow: bool,
    /// Protocol.
    pub protocol: Protocol,
    /// `LocalPorts`: one port or a comma-separated list.
    pub local_ports: String,
    /// `RemoteAddresses`: one address.
    pub remote_addresses: String,
}

/// Whether a rule name is one of ours.
#[must_use]
pub fn is_ours(name: &str) -> bool {
    name.strip_prefix(RULE_PREFIX)
        .is_some_and(|rest| rest.starts_with(' '))
}

/// The allow rule of a grant.
#[must_use]
pub fn grant_rule(key: &GrantKey) -> RuleSpec {
    RuleSpec {
        name: format!("{RULE_PREFIX} grant {} {}", key.port_spec(), key.addr),
        description: format!(
            "capyknock: {} may reach {} (removed by the capyknock daemon when the grant expires)",
            key.addr,
            key.port_spec()
        ),
        allow: true,
        protocol: key.protocol,
        local_ports: key.port.to_string(),
        remote_addresses: key.addr.to_string(),
    }
}

/// The block rules of a ban: one per protocol that has protected ports.
#[must_use]
pub fn ban_rules(addr: IpAddr, protected: &[PortSpec]) -> Vec<RuleSpec> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .filter_map(|protocol| {
            let ports: BTreeSet<u16> = protected
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(|p| p.port)
                .collect();
            if ports.is_empty() {
                return None;
            }
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            Some(RuleSpec {
                name: ban_rule_name(addr, protocol),
                description: format!("capyknock: {addr} is banned"),
                allow: false,
                protocol,
                local_ports: list.join(","),
                remote_addresses: addr.to_string(),
            })
        })
        .collect()
}

/// Name of the ban rule of `addr` for `protocol`.
#[must_use]
pub fn ban_rule_name(addr: IpAddr, protocol: Protocol) -> String {
    format!("{RULE_PREFIX} ban {protocol} {addr}")
}

/// Every rule the ledger calls for.
#[must_use]
pub fn desired_rules(ledger: &Ledger, protected: &[PortSpec]) -> Vec<RuleSpec> {
    let mut rules: Vec<RuleSpec> = ledger.grants().map(|g| grant_rule(&g.key())).collect();
    for ban in ledger.bans() {
        rules.extend(ban_rules(ban.addr, protected));
    }
    rules.sort();
    rules.dedup_by(|a, b| a.name == b.name);
    rules
}

/// Changes that turn the rules we have into the rules we want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Rules to create.
    pub add: Vec<RuleSpec>,
    /// Names of our rules to delete. Never a rule that is not ours.
    pub remove: Vec<String>,
}

/// Plans the reconciliation of `existing` rule names (all rules; others' are ignored) with
/// `desired`.
#[must_use]
pub fn plan(existing: &[String], desired: &[RuleSpec]) -> Plan {
    let have: BTreeSet<&str> = existing
        .iter()
        .map(String::as_str)
        .filter(|n| is_ours(n))
        .collect();
    let want: BTreeSet<&str> = desired.iter().map(|r| r.name.as_str()).collect();
    Plan {
        add: desired
            .iter()
            .filter(|r| !have.contains(r.name.as_str()))
            .cloned()
            .collect(),
        remove: have
            .iter()
            .filter(|n| !want.contains(*n))
            .map(|n| (*n).to_owned())
            .collect(),
    }
}

/// An established TCP connection to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The peer.
    pub remote: IpAddr,
    /// Our port.
    pub local_port: u16,
}

/// Whether an established connection still uses an (expired) grant: TCP only, same peer, same
/// local port.
#[must_use]
pub fn in_use(connections: &[Connection], key: &GrantKey) -> bool {
    key.protocol == Protocol::Tcp
        && connections
            .iter()
            .any(|c| c.remote == key.addr && c.local_port == key.port)
}

/// A port from a `MIB_TCPROW2`/`MIB_TCP6ROW2` `dw*Port` field: network byte order in the low
/// 16 bits of a little-endian DWORD.
#[must_use]
pub fn port_from_dword(raw: u32) -> u16 {
    let [a, b, _, _] = raw.to_le_bytes();
    u16::from_be_bytes([a, b])
}

/// An IPv4 address from a `dw*Addr` field (an `in_addr`: network byte order in memory).
#[must_use]
pub fn ipv4_from_dword(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_le_bytes())
}

/// An IPv6 peer, mapped back to IPv4 when it is an IPv4-mapped address (dual-stack sockets).
#[must_use]
pub fn ipv6_peer(bytes: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::firewall::model::{Ban, PortGrant};

    fn key(addr: &str, protocol: Protocol, port: u16) -> GrantKey {
        GrantKey {
            addr: addr.parse().unwrap(),
            protocol,
            port,
        }
    }

    #[test]
    fn names_are_prefixed_and_distinct() {
        let a = grant_rule(&key("192.0.2.1", Protocol::Tcp, 22));
        let b = grant_rule(&key("192.0.2.1", Protocol::Udp, 22));
        let c = grant_rule(&key("2001:db8::1", Protocol::Tcp, 22));
        assert_eq!(a.name, "capyknock grant tcp/22 192.0.2.1");
        assert_ne!(a.name, b.name);
        assert_eq!(c.remote_addresses, "2001:db8::1");
        assert!(a.allow);
        for r in [&a, &b, &c] {
            assert!(is_ours(&r.name));
        }
        assert!(!is_ours("capyknocker rule"));
        assert!(!is_ours("Remote Desktop - User Mode (TCP-In)"));
        assert!(!is_ours("capyknock"));
    }

    #[test]
    fn ban_rules_cover_protected_ports_per_protocol() {
        let addr: IpAddr = "198.51.100.7".parse().unwrap();
        let rules = ban_rules(
            addr,
            &[
                PortSpec::tcp(3389),
                PortSpec::tcp(22),
                PortSpec::tcp(22),
                PortSpec::udp(51820),
            ],
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].protocol, Protocol::Tcp);
        assert_eq!(rules[0].local_ports, "22,3389");
        assert!(!rules[0].allow);
        assert_eq!(rules[1].local_ports, "51820");
        assert!(ban_rules(addr, &[]).is_empty());
    }

    #[test]
    fn plan_reconciles_only_our_rules() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_hours(500_000);
        let mut ledger = Ledger::new();
        ledger
            .merge_grants(
                &[PortGrant {
                    addr: "192.0.2.1".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port: 22,
                    until: t0 + Duration::from_mins(1),
                    owner: None,
                }],
                t0,
            )
            .unwrap();
        ledger
            .set_ban(
                Ban {
                    addr: "192.0.2.9".parse().unwrap(),
                    until: None,
                },
                t0,
            )
            .unwrap();
        let desired = desired_rules(&ledger, &[PortSpec::tcp(22)]);
        assert_eq!(desired.len(), 2);
        let existing = vec![
            "Core Networking - DNS (UDP-Out)".to_owned(),
            "capyknock grant tcp/22 192.0.2.1".to_owned(),
            "capyknock grant tcp/22 192.0.2.50".to_owned(),
        ];
        let p = plan(&existing, &desired);
        assert_eq!(
            p.remove,
            vec!["capyknock grant tcp/22 192.0.2.50".to_owned()]
        );
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.add[0].name, "capyknock ban tcp 192.0.2.9");
        // Applying the plan reaches a fixed point.
        let after: Vec<String> = desired.iter().map(|r| r.name.clone()).collect();
        assert_eq!(plan(&after, &desired), Plan::default());
    }

    #[test]
    fn established_connections_keep_tcp_grants_only() {
        let conns = [Connection {
            remote: "192.0.2.1".parse().unwrap(),
            local_port: 22,
        }];
        assert!(in_use(&conns, &key("192.0.2.1", Protocol::Tcp, 22)));
        assert!(!in_use(&conns, &key("192.0.2.1", Protocol::Tcp, 443)));
        assert!(!in_use(&conns, &key("192.0.2.2", Protocol::Tcp, 22)));
        assert!(!in_use(&conns, &key("192.0.2.1", Protocol::Udp, 22)));
    }

    #[test]
    fn tcp_table_fields_decode() {
        // Port 22 in network order in the low word of a little-endian DWORD: bytes 00 16 00 00.
        assert_eq!(port_from_dword(u32::from_le_bytes([0x00, 0x16, 0, 0])), 22);
        assert_eq!(
            port_from_dword(u32::from_le_bytes([0x0d, 0x3d, 0xff, 0xff])),
            3389
        );
        assert_eq!(
            ipv4_from_dword(u32::from_le_bytes([192, 0, 2, 1])),
            Ipv4Addr::new(192, 0, 2, 1)
        );
        let mapped = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        assert_eq!(ipv6_peer(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    }
}
