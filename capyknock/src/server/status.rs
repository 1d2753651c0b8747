//! What `capyknock status` shows: a snapshot of the running daemon, serialised as JSON over the
//! control socket (`status --json` prints it as is) and rendered for humans.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

/// A snapshot of the daemon. Field names are part of the documented `status --json` interface
/// (docs/OPERATIONS.md); add fields freely, never rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// capyknock version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Configuration file in force.
    pub config: String,
    /// Time of the last successful (re)load, Unix seconds.
    pub config_loaded_at: u64,
    /// Knock ports.
    pub knock_ports: Vec<u16>,
    /// Number of configured users.
    pub users: usize,
    /// Capture mode and interfaces.
    pub capture: CaptureStatus,
    /// Firewall backend.
    pub firewall: FirewallStatus,
    /// Pre-filter counters (kernel or userspace), by name.
    pub prefilter: BTreeMap<String, u64>,
    /// Verifier outcomes.
    pub verifier: VerifierStatus,
    /// Active grants.
    pub grants: Vec<GrantStatus>,
    /// Active bans.
    pub bans: Vec<BanStatus>,
    /// Rejection log lines suppressed by the log rate limit since start.
    pub log_lines_suppressed: u64,
    /// Fleet mode (`[cluster]`); absent on a single server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// Fleet part of [`Status`] (docs/FLEET.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// Whether the last health probe reached a store with a quorum.
    pub store_healthy: bool,
    /// The etcd endpoints configured.
    pub endpoints: Vec<String>,
    /// The endpoint that answered last.
    pub answering: String,
    /// `refuse` or `local`.
    pub on_store_failure: String,
    /// Knocks claimed fleet-wide.
    pub claimed: u64,
    /// Knocks refused because another claim came first.
    pub replayed_in_fleet: u64,
    /// Knocks refused because the store was unreachable.
    pub refused_store_down: u64,
    /// Knocks accepted on local state alone.
    pub accepted_locally: u64,
    /// The etcd members the store listed last (its member list, read every few seconds).
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// The fleet watches (bans, group grants) and how far behind the store each is.
    #[serde(default)]
    pub watches: Vec<WatchStatus>,
}

/// One etcd member, as the store's member list names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's name (etcd `--name`).
    pub name: String,
    /// Where it serves clients.
    pub client_urls: Vec<String>,
    /// Whether it was the Raft leader when the list was read (requests go to it first).
    #[serde(default)]
    pub leader: bool,
    /// The configured endpoint that reached it (etcd's own answer, whatever URL the member
    /// advertises); `None`: none of this node's endpoints did (or a daemon before this field).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// One fleet watch (docs/FLEET.md "Status").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// `bans` or `group grants`.
    pub name: String,
    /// A watch stream is open and caught up.
    pub watching: bool,
    /// How long etcd took to confirm the watch had delivered every change (asked every
    /// second), or how long an overdue confirmation has been awaited; `None` before the first.
    pub lag_ms: Option<u64>,
}

/// Capture part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStatus {
    /// `xdp`, `pcap` or `udp`.
    pub mode: String,
    /// Interfaces captured on now, those that appeared after start included (empty for `udp`,
    /// whose sockets take every interface).
    pub interfaces: Vec<String>,
    /// Free-form details: the XDP attach mode in use per interface (`eth0: native, veth1: skb`).
    pub detail: String,
    /// Which interfaces that appear later are captured on: `all`, or the configured names and
    /// patterns; empty when new interfaces are not followed (`udp`). Absent before 0.2.
    #[serde(default)]
    pub follows: String,
}

/// Firewall part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// Backend name.
    pub backend: String,
}

/// Verifier outcome counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierStatus {
    /// Knocks that granted access.
    pub accepted: u64,
    /// Rejected knocks by reason (the same names as in the rejection log lines).
    pub rejected: BTreeMap<String, u64>,
    /// Grants the firewall failed to apply.
    pub firewall_errors: u64,
    /// Whether uses of codes can be saved; while false every knock is refused
    /// (`state_unavailable`). Absent from daemons before 0.2 (read as true).
    #[serde(default = "yes")]
    pub replay_state_durable: bool,
    /// Users with a saved last use.
    #[serde(default)]
    pub replay_state_users: usize,
}

fn yes() -> bool {
    true
}

/// One active grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStatus {
    /// The user's nickname.
    pub nickname: String,
    /// The address let in.
    pub addr: IpAddr,
    /// Ports opened, as `tcp/22`.
    pub ports: Vec<String>,
    /// Seconds until it closes.
    pub expires_in_secs: u64,
}

/// One active ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanStatus {
    /// The banned address.
    pub addr: IpAddr,
    /// Seconds until it lifts; `None`: until `capyknock unban`.
    pub expires_in_secs: Option<u64>,
}

/// The fleet lines of [`render_human`].
fn render_cluster(out: &mut String, c: &ClusterStatus) {
    let _ = writeln!(
        out,
        "\nfleet:       node {}, store {} (answering: {}), on_store_failure = {}",
        c.node,
        if c.store_healthy {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        if c.answering.is_empty() {
            "none"
        } else {
            &c.answering
        },
        c.on_store_failure
    );
    let _ = writeln!(
        out,
        "  claimed {}, replayed in fleet {}, refused (store down) {}, accepted locally {}",
        c.claimed, c.replayed_in_fleet, c.refused_store_down, c.accepted_locally
    );
    if !c.watches.is_empty() {
        let watches: Vec<String> = c
            .watches
            .iter()
            .map(|w| match (w.watching, w.lag_ms) {
                (false, _) => format!("{} NOT WATCHING", w.name),
                (true, Some(ms)) => format!("{} lag {ms} ms", w.name),
                (true, None) => format!("{} lag not measured yet", w.name),
            })
            .collect();
        let _ = writeln!(out, "  watches: {}", watches.join(", "));
    }
    if !c.members.is_empty() {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| {
                let role = if m.leader { "leader, " } else { "" };
                let via = match &m.endpoint {
                    Some(e) if !m.client_urls.contains(e) => format!(" via {e}"),
                    _ => String::new(),
                };
                format!("{} ({role}{}{via})", m.name, m.client_urls.join(" "))
            })
            .collect();
        let _ = writeln!(out, "  etcd members seen: {}", members.join(", "));
    }
}

/// Renders `status` for a terminal.
#[must_use]
pub fn render_human(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "capyknock {} (up {})", s.version, dur(s.uptime_secs));
    let _ = writeln!(
        out,
        "config:      {} ({})",
        s.config,
        crate::ports::count_of(s.users, "user")
    );
    let _ = writeln!(
        out,
        "knock ports: {}",
        crate::ports::knock_ports_text(&s.knock_ports)
    );
    let ifaces = if !s.capture.interfaces.is_empty() {
        s.capture.interfaces.join(", ")
    } else if s.capture.mode == "udp" {
        "every interface (a UDP socket)".to_owned()
    } else {
        "no interface yet".to_owned()
    };
    let _ = write!(out, "capture:     {} on {ifaces}", s.capture.mode);
    if !s.capture.detail.is_empty() {
        let _ = write!(out, " ({})", s.capture.detail);
    }
    out.push('\n');
    if !s.capture.follows.is_empty() {
        let _ = writeln!(out, "             new interfaces: {}", s.capture.follows);
    }
    let _ = writeln!(out, "firewall:    {}", s.firewall.backend);

    out.push_str("\npre-filter:\n");
    if s.prefilter.is_empty() {
        out.push_str("  (no counters)\n");
    }
    for (name, n) in &s.prefilter {
        let _ = writeln!(out, "  {name:<28} {n}");
    }
    out.push_str("\nverifier:\n");
    if !s.verifier.replay_state_durable {
        out.push_str(
            "  REPLAY STATE CANNOT BE SAVED: every knock is refused until the state directory \
             is writable again (see the log)\n",
        );
    }
    let _ = writeln!(out, "  {:<28} {}", "accepted", s.verifier.accepted);
    for (name, n) in &s.verifier.rejected {
        let _ = writeln!(out, "  {:<28} {n}", format!("rejected {name}"));
    }
    if s.verifier.firewall_errors > 0 {
        let _ = writeln!(
            out,
            "  {:<28} {}",
            "firewall errors", s.verifier.firewall_errors
        );
    }
    if s.log_lines_suppressed > 0 {
        let _ = writeln!(
            out,
            "  ({} rejection log lines suppressed by the log rate limit)",
            s.log_lines_suppressed
        );
    }
    if let Some(c) = &s.cluster {
        render_cluster(&mut out, c);
    }

    let _ = writeln!(out, "\ngrants ({}):", s.grants.len());
    for g in &s.grants {
        let _ = writeln!(
            out,
            "  {:<16} {:<40} {:<24} {} left",
            g.nickname,
            g.addr,
            g.ports.join(","),
            dur(g.expires_in_secs)
        );
    }
    let _ = writeln!(out, "\nbans ({}):", s.bans.len());
    for b in &s.bans {
        match b.expires_in_secs {
            Some(secs) => {
                let _ = writeln!(out, "  {:<40} {} left", b.addr, dur(secs));
            }
            None => {
                let _ = writeln!(out, "  {:<40} until unbanned", b.addr);
            }
        }
    }
    out
}

fn dur(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            uptime_secs: 3725,
            config: "/etc/capyknock/server.toml".into(),
            config_loaded_at: 1_700_000_000,
            knock_ports: vec![62201],
            users: 2,
            capture: CaptureStatus {
                mode: "xdp".into(),
                interfaces: vec!["eth0".into(), "veth-ck".into()],
                detail: "eth0: native, veth-ck: skb".into(),
                follows: "all".into(),
            },
            firewall: FirewallStatus {
                backend: "nftables".into(),
            },
            prefilter: BTreeMap::from([("delivered".into(), 3), ("bad_tag".into(), 7)]),
            verifier: VerifierStatus {
                accepted: 2,
                rejected: BTreeMap::from([("replay".into(), 1)]),
                firewall_errors: 0,
                replay_state_durable: true,
                replay_state_users: 1,
            },
            grants: vec![GrantStatus {
                nickname: "alice".into(),
                addr: "2001:db8::1".parse().unwrap(),
                ports: vec!["tcp/22".into()],
                expires_in_secs: 299,
            }],
            bans: vec![
                BanStatus {
                    addr: "203.0.113.9".parse().unwrap(),
                    expires_in_secs: None,
                },
                BanStatus {
                    addr: "203.0.113.10".parse().unwrap(),
                    expires_in_secs: Some(60),
                },
            ],
            log_lines_suppressed: 0,
            cluster: None,
        }
    }

    #[test]
    fn old_status_without_follows_still_parses() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["capture"].as_object_mut().unwrap().remove("follows");
        let s: Status = serde_json::from_value(json).unwrap();
        assert_eq!(s.capture.follows, "");
        assert!(!render_human(&s).contains("new interfaces"));
        let udp = Status {
            capture: CaptureStatus {
                mode: "udp".into(),
                interfaces: vec![],
                detail: String::new(),
                follows: String::new(),
            },
            ..sample()
        };
        assert!(render_human(&udp).contains("udp on every interface"));
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        assert!(json.contains("\"expires_in_secs\":299"), "{json}");
    }

    #[test]
    fn human_output_shows_everything() {
        let text = render_human(&sample());
        for want in [
            "capyknock 0.1.0 (up 1h 2m 5s)",
            "udp/62201",
            "xdp on eth0, veth-ck (eth0: native, veth-ck: skb)",
            "new interfaces: all",
            "nftables",
            "bad_tag",
            "rejected replay",
            "alice",
            "2001:db8::1",
            "tcp/22",
            "4m 59s left",
            "203.0.113.9",
            "until unbanned",
            "1m left",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn fleet_lines_show_watch_lag_and_members() {
        let cluster = ClusterStatus {
            node: "bastion-1".into(),
            store_healthy: true,
            answering: "https://10.0.0.1:2379".into(),
            on_store_failure: "refuse".into(),
            members: vec![
                MemberStatus {
                    name: "etcd-a".into(),
                    client_urls: vec!["https://10.0.0.1:2379".into()],
                    leader: false,
                    endpoint: Some("https://10.0.0.1:2379".into()),
                },
                MemberStatus {
                    name: "etcd-b".into(),
                    client_urls: vec!["https://127.0.0.1:2379".into()],
                    leader: true,
                    endpoint: Some("https://etcd-b.example:2379".into()),
                },
                MemberStatus {
                    name: "etcd-c".into(),
                    client_urls: vec!["https://10.0.0.3:2379".into()],
                    leader: false,
                    endpoint: None,
                },
            ],
            watches: vec![
                WatchStatus {
                    name: "bans".into(),
                    watching: true,
                    lag_ms: Some(3),
                },
                WatchStatus {
                    name: "group grants".into(),
                    watching: false,
                    lag_ms: None,
                },
            ],
            ..ClusterStatus::default()
        };
        let text = render_human(&Status {
            cluster: Some(cluster),
            ..sample()
        });
        for want in [
            "node bastion-1, store reachable",
            "watches: bans lag 3 ms, group grants NOT WATCHING",
            "etcd members seen: etcd-a (https://10.0.0.1:2379), \
             etcd-b (leader, https://127.0.0.1:2379 via https://etcd-b.example:2379), \
             etcd-c (https://10.0.0.3:2379)",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        // A status from a daemon before these fields parses, with none shown.
        let mut json = serde_json::to_value(Status {
            cluster: Some(ClusterStatus::default()),
            ..sample()
        })
        .unwrap();
        let c = json["cluster"].as_object_mut().unwrap();
        c.remove("watches");
        // Members as a daemon before `leader` listed them.
        c.insert(
            "members".into(),
            serde_json::json!([{"name": "etcd-a", "client_urls": []}]),
        );
        let old: Status = serde_json::from_value(json).unwrap();
        assert!(!render_human(&old).contains("watches:"));
        assert!(render_human(&old).contains("etcd members seen: etcd-a ()"));
    }
}
