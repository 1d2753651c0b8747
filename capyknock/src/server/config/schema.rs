//! The shape of the server config: [`RawConfig`] and its sections exactly as written (serde,
//! unknown keys refused, spans kept for messages), and [`Settings`], the checked values the
//! daemon uses. docs/CONFIG.md describes every key; [`super::validate`] turns one into the other.

use std::{collections::BTreeSet, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    capture::{CaptureMode, XdpAttachMode},
    firewall::FirewallConfig,
    ports::PortSpec,
    protocol::users::{User, Users, UsersError},
    server::{
        cluster::config::{ClusterSettings, RawCluster},
        metrics::Listen,
        realtime::RealtimePriority,
    },
};

/// The configuration file exactly as written. Missing sections take their defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: ports, interfaces, paths, timing.
    pub server: RawServer,
    /// `[limits]`: pre-filter rate limits.
    pub limits: RawLimits,
    /// `[log]`: rejection log rate limits.
    pub log: RawLog,
    /// `[firewall]`: the firewall backend's settings.
    pub firewall: Option<Spanned<FirewallConfig>>,
    /// `[cluster]`: fleet mode on etcd (`server::cluster`); absent: a single server.
    pub cluster: Option<Spanned<RawCluster>>,
    /// `[[user]]` entries.
    #[serde(rename = "user")]
    pub users: Vec<Spanned<RawUser>>,
}

/// `interfaces`: the word `"all"`, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawInterfaces {
    /// One word; only `"all"` is valid.
    Word(String),
    /// Names and `prefix*` patterns.
    List(Vec<String>),
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// UDP ports knocks are sent to. Default `[62201]`.
    pub knock_ports: Option<Spanned<Vec<u16>>>,
    /// Interfaces to capture on: `"all"` or a list of names and `prefix*` patterns. Default:
    /// all (every interface that is up or comes up, except loopback).
    pub interfaces: Option<Spanned<RawInterfaces>>,
    /// `auto`, `xdp`, `pcap` or `udp`. Default `auto`.
    pub capture: Option<Spanned<String>>,
    /// `auto`, `native` or `skb`. Default `auto`.
    pub xdp_mode: Option<Spanned<String>>,
    /// Replay state and bans. Default `/var/lib/capyknock`.
    pub state_dir: Option<Spanned<String>>,
    /// Control socket path. Default `/run/capyknock/control.sock`.
    pub control_socket: Option<Spanned<String>>,
    /// Group allowed to use the control socket. Default: none (root only).
    pub control_group: Option<Spanned<String>>,
    /// Freshness window. Default `90s`.
    pub freshness: Option<Spanned<ConfigDuration>>,
    /// Access duration for users without their own. Default `5m`.
    pub default_access: Option<Spanned<ConfigDuration>>,
    /// On reload, revoke the grants of users removed from the file. Default `false`.
    pub revoke_removed_users: Option<bool>,
    /// Privilege separation (Linux): the network-facing daemon drops every capability and runs
    /// under a seccomp filter; a helper process keeping only `CAP_NET_ADMIN` changes the
    /// firewall. Default: on when the daemon starts as root on Linux.
    pub privsep: Option<bool>,
    /// Ports the firewall closes to everyone a knock did not open them for (`"tcp/22"`, ...).
    /// Default: every port some user may open.
    pub protect: Option<Spanned<Vec<Spanned<String>>>>,
    /// Where the OpenMetrics endpoint listens: a loopback `ADDRESS:PORT` or `unix:PATH`.
    /// Default: none (no endpoint).
    pub metrics_listen: Option<Spanned<String>>,
    /// Run the knock path's threads under `SCHED_FIFO` at this priority (1-99, Linux;
    /// `server::realtime`). Default: none (normal priority).
    pub realtime_priority: Option<Spanned<i64>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Candidates per second per source (IPv6: per /64). Default 10.
    pub per_source_rate: Option<Spanned<u32>>,
    /// Burst per source. Default 20.
    pub per_source_burst: Option<Spanned<u32>>,
    /// Candidates per second per user (whatever the source). Default 10.
    pub per_user_rate: Option<Spanned<u32>>,
    /// Burst per user. Default 20.
    pub per_user_burst: Option<Spanned<u32>>,
    /// Candidates per second from everyone. Default 10000.
    pub global_rate: Option<Spanned<u32>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// Rejection lines per source address per minute. Default 10.
    pub rejections_per_source_per_minute: Option<Spanned<u32>>,
    /// Rejection lines per second overall. Default 20.
    pub rejections_per_second: Option<Spanned<u32>>,
}

/// One `[[user]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// 32 lowercase hex characters.
    pub id: Spanned<String>,
    /// Human name used in logs and status.
    pub nickname: Spanned<String>,
    /// Standard base64 of 32 bytes.
    pub key: Spanned<String>,
    /// Base32 (RFC 4648, no padding) of 20 bytes.
    pub totp_secret: Spanned<String>,
    /// `prompt` or `derived`. Default `prompt`.
    pub totp_mode: Option<Spanned<String>>,
    /// `tcp/22`, `udp/51820`, ...
    pub ports: Spanned<Vec<Spanned<String>>>,
    /// Access duration. Default `[server] default_access`.
    pub access: Option<Spanned<ConfigDuration>>,
    /// `source`, `payload` or `require-match`. Default `source`.
    pub allow_ip: Option<Spanned<String>>,
    /// Fleet mode: `node` (a knock opens on the node it reached) or `group:NAME` (on every
    /// node of group NAME). Default `node`.
    pub scope: Option<Spanned<String>>,
}

/// A duration written as a string with units (`"90s"`, `"5m"`, `"1h 30m"`) or as an integer
/// number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"5m\" or \"1h\", or a number of seconds")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| ConfigDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration(Duration::from_secs(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v)
                    .map(ConfigDuration)
                    .map_err(|e| {
                        E::custom(format_args!(
                            "invalid duration {v:?} ({e}): write e.g. \"90s\", \"5m\" or \"1h\""
                        ))
                    })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Pre-filter rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Candidates per second per source.
    pub per_source_rate: u32,
    /// Burst per source.
    pub per_source_burst: u32,
    /// Candidates per second per user.
    pub per_user_rate: u32,
    /// Burst per user.
    pub per_user_burst: u32,
    /// Candidates per second overall.
    pub global_rate: u32,
}

/// Rejection log rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogLimits {
    /// Lines per source per minute.
    pub per_source_per_minute: u32,
    /// Lines per second overall.
    pub per_second: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from.
    pub path: PathBuf,
    /// Knock ports, sorted, no duplicates, never 0.
    pub knock_ports: Vec<u16>,
    /// Interfaces to capture on (names and `prefix*` patterns); empty: all, except loopback.
    pub interfaces: Vec<String>,
    /// Capture mode.
    pub capture: CaptureMode,
    /// XDP attach mode; `None` (`"auto"`) tries native, then SKB (SKB at once on a veth).
    pub xdp_mode: Option<XdpAttachMode>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Group allowed on the control socket.
    pub control_group: Option<String>,
    /// Freshness window.
    pub freshness: Duration,
    /// Default access duration.
    pub default_access: Duration,
    /// Revoke removed users' grants on reload.
    pub revoke_removed_users: bool,
    /// `privsep`: `None` means on when running as root on Linux (see `server::privsep`).
    pub privsep: Option<bool>,
    /// `protect`: the ports the firewall protects, sorted, no duplicates, a superset of every
    /// user's ports; `None` when the file has no `protect` (then the users' ports are).
    pub protect: Option<Vec<PortSpec>>,
    /// The metrics endpoint; `None`: off.
    pub metrics_listen: Option<Listen>,
    /// `realtime_priority`; `None`: the knock path runs at normal priority.
    pub realtime_priority: Option<RealtimePriority>,
    /// Pre-filter rate limits.
    pub limits: Limits,
    /// Rejection log limits.
    pub log: LogLimits,
    /// The `[firewall]` section.
    pub firewall: FirewallConfig,
    /// The `[cluster]` section; `None`: a single server, no etcd.
    pub cluster: Option<ClusterSettings>,
    /// Users whose `scope` is a group: the group's name. Absent: `scope = "node"`.
    pub user_scopes: std::collections::BTreeMap<crate::protocol::keys::UserId, String>,
    /// Users, in file order (ids and nicknames unique).
    pub users: Vec<User>,
}

impl Settings {
    /// The users as the verifier's lookup table (derives each user's keys once).
    pub fn users_table(&self) -> Result<Users, UsersError> {
        Users::new(self.users.clone())
    }

    /// What the firewall protects (closes to everyone a knock did not open it for): `protect`
    /// when the file has it, else every port some user may open. Sorted, no duplicates.
    #[must_use]
    pub fn protected_ports(&self) -> Vec<PortSpec> {
        match &self.protect {
            Some(ports) => ports.clone(),
            None => self.users_ports().into_iter().collect(),
        }
    }

    /// Every port some user may open.
    fn users_ports(&self) -> BTreeSet<PortSpec> {
        self.users
            .iter()
            .flat_map(|u| u.ports.iter().copied())
            .collect()
    }

    /// What an admin should know about the protected ports, one sentence each: ports in
    /// `protect` that no user can open (closed to everyone), or, without `protect`, that a port
    /// taken from its last user is no longer protected after a restart.
    #[must_use]
    pub fn protection_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.protect {
            Some(protect) => {
                let users = self.users_ports();
                let closed: Vec<String> = protect
                    .iter()
                    .filter(|p| !users.contains(p))
                    .map(ToString::to_string)
                    .collect();
                if !closed.is_empty() {
                    out.push(format!(
                        "no user may open {}: closed to everyone (give a user the port, or \
                         take it out of protect)",
                        closed.join(", ")
                    ));
                }
            }
            None if self.users.is_empty() => out.push(
                "no users and no `protect` list: the firewall protects no port; list the ports \
                 to keep closed in [server] protect, e.g. protect = [\"tcp/22\"]"
                    .to_owned(),
            ),
            None => out.push(
                "no `protect` list: the firewall protects the users' ports, so a port taken \
                 from its last user is open to everyone after the next restart; list the ports \
                 to keep closed in [server] protect, e.g. protect = [\"tcp/22\"]"
                    .to_owned(),
            ),
        }
        out
    }
}
