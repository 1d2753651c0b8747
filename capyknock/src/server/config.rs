//! The server configuration file (TOML): raw serde structs as written by the admin, validated
//! into [`Settings`] that the daemon uses.
//!
//! Two layers, as in ripgrep's `lowargs`/`hiargs`: [`RawConfig`] mirrors the file exactly (every
//! field optional where a default exists, unknown keys refused), and [`Settings`] holds only
//! checked, typed values. Every problem is reported with the file, the line and what to do, and
//! all problems are reported at once so one `check-config` run shows everything to fix.
//! docs/CONFIG.md documents every key; contrib/server.example.toml is the reference file and is
//! checked by the tests below.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    firewall::FirewallConfig,
    ports::{PortSpec, Protocol},
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        users::{AllowIp, TotpMode, User, Users, UsersError},
    },
};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/capyknock/server.toml";
/// Default state directory (systemd `StateDirectory=capyknock`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/capyknock";
/// Default control socket (systemd `RuntimeDirectory=capyknock`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/capyknock/control.sock";
/// Default access duration for users that do not set their own.
pub const DEFAULT_ACCESS: Duration = Duration::from_mins(5);

/// Most knock ports one server watches (the XDP map's size).
pub const MAX_KNOCK_PORTS: usize = capyknock_common::maps::KNOCK_PORTS_MAX as usize;
/// Most users one configuration may hold.
pub const MAX_USERS: usize = capyknock_common::maps::USERS_MAX as usize;
/// Most ports one user may be allowed.
pub const MAX_USER_PORTS: usize = 64;
/// Most interfaces one server captures on.
pub const MAX_INTERFACES: usize = 64;
/// Longest nickname.
pub const MAX_NICKNAME_LEN: usize = 32;
/// Shortest and longest access durations.
pub const ACCESS_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_hours(7 * 24));
/// Shortest and longest freshness windows.
pub const FRESHNESS_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_mins(10));
/// Largest config file read (a config with [`MAX_USERS`] users fits easily).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Raw layer: the file as written.
// ---------------------------------------------------------------------------------------------

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
    /// `[[user]]` entries.
    #[serde(rename = "user")]
    pub users: Vec<Spanned<RawUser>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// UDP ports knocks are sent to. Default `[62201]`.
    pub knock_ports: Option<Spanned<Vec<u16>>>,
    /// Interfaces to capture on. Default: empty (capture chooses).
    pub interfaces: Option<Spanned<Vec<String>>>,
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
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Candidates per second per source (IPv6: per /64). Default 10.
    pub per_source_rate: Option<Spanned<u32>>,
    /// Burst per source. Default 20.
    pub per_source_burst: Option<Spanned<u32>>,
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

// ---------------------------------------------------------------------------------------------
// Validated layer.
// ---------------------------------------------------------------------------------------------

/// How knock candidates are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureChoice {
    /// XDP, else pcap, else a UDP socket.
    Auto,
    /// XDP pre-filter in the kernel (Linux).
    Xdp,
    /// libpcap.
    Pcap,
    /// A plain UDP socket on the knock port.
    Udp,
}

impl CaptureChoice {
    /// Name as written in the config and on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Pcap => "pcap",
            Self::Udp => "udp",
        }
    }
}

impl std::str::FromStr for CaptureChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "xdp" => Ok(Self::Xdp),
            "pcap" => Ok(Self::Pcap),
            "udp" => Ok(Self::Udp),
            _ => Err(format!(
                "unknown capture mode {s:?}: use auto, xdp, pcap or udp"
            )),
        }
    }
}

/// How XDP attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to SKB mode.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic SKB mode only.
    Skb,
}

/// Pre-filter rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Candidates per second per source.
    pub per_source_rate: u32,
    /// Burst per source.
    pub per_source_burst: u32,
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
    /// Interfaces to capture on; empty lets capture choose.
    pub interfaces: Vec<String>,
    /// Capture mode.
    pub capture: CaptureChoice,
    /// XDP attach mode.
    pub xdp_mode: XdpModeChoice,
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
    /// Pre-filter rate limits.
    pub limits: Limits,
    /// Rejection log limits.
    pub log: LogLimits,
    /// The `[firewall]` section.
    pub firewall: FirewallConfig,
    /// Users, in file order (ids and nicknames unique).
    pub users: Vec<User>,
}

impl Settings {
    /// The users as the verifier's lookup table (derives each user's keys once).
    pub fn users_table(&self) -> Result<Users, UsersError> {
        Users::new(self.users.clone())
    }

    /// Every port any user may open: what the firewall protects.
    #[must_use]
    pub fn protected_ports(&self) -> Vec<PortSpec> {
        let set: BTreeSet<PortSpec> = self
            .users
            .iter()
            .flat_map(|u| u.ports.iter().copied())
            .collect();
        set.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: check the path (or pass --config PATH)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file, or too large.
    #[error("config {}: {reason}", path.display())]
    NotUsable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Readable or writable by group or others.
    #[error(
        "config {} has mode {mode:04o}: it holds secret keys and must not be accessible by group \
         or others; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Syntax or content problems, each with its line.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "config {} has {} problem{}:",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        match p.line {
            Some(line) => {
                let _ = write!(out, "\n  {}:{line}: {}", path.display(), p.message);
            }
            None => {
                let _ = write!(out, "\n  {}: {}", path.display(), p.message);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------

/// Reads, checks permissions, parses and validates `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = read_checked(path)?;
    parse(path, &text)
}

/// Reads `path` after checking it is a regular file of sane size that only its owner can access.
pub fn read_checked(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::NotUsable {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::NotUsable {
            path: path.to_owned(),
            reason: format!(
                "{} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit",
                meta.len()
            ),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    std::fs::read_to_string(path).map_err(read_err)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(vec![toml_problem(text, &e)]))?;
    validate(path, text, raw).map_err(invalid)
}

/// Reads only the control socket path from a config, without the permission check or full
/// validation: used by the `status`/`ban` clients, which may not be allowed to read the whole
/// file. Falls back to the default when the file cannot be read.
#[must_use]
pub fn control_socket_of(path: &Path) -> PathBuf {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        server: PartialServer,
    }
    #[derive(Default, Deserialize)]
    struct PartialServer {
        control_socket: Option<String>,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<Partial>(&t).ok())
        .and_then(|p| p.server.control_socket)
        .map_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET), PathBuf::from)
}

fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    let mut message = err.message().trim_end().to_owned();
    if message.starts_with("unknown field") {
        message.push_str(": remove it or fix its spelling (docs/CONFIG.md lists every key)");
    } else if message.starts_with("missing field") {
        message.push_str(": add it (docs/CONFIG.md describes it)");
    } else {
        message.push_str(": fix the syntax (see docs/CONFIG.md and contrib/server.example.toml)");
    }
    Problem {
        line: err.span().map(|s| line_of(text, &s)),
        message,
    }
}

/// 1-based line of the start of `span` in `text`.
#[expect(
    clippy::naive_bytecount,
    reason = "config files are small and read once"
)]
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// Collects problems while validating.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: Some(line_of(self.text, span)),
            message: message.into(),
        });
    }
    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span)
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one linear pass over the keys, in file order, each with its default beside it"
)]
fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Settings, Vec<Problem>> {
    let _ = path;
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let s = raw.server;

    let knock_ports = match s.knock_ports {
        None => vec![capyknock_common::wire::DEFAULT_KNOCK_PORT],
        Some(ports) => {
            let span = ports.span();
            let list = ports.into_inner();
            let set: BTreeSet<u16> = list.iter().copied().collect();
            if list.is_empty() {
                c.at(
                    &span,
                    "knock_ports is empty: list at least one UDP port, e.g. [62201]",
                );
            } else if list.len() > MAX_KNOCK_PORTS {
                c.at(
                    &span,
                    format!(
                        "knock_ports lists {} ports; at most {MAX_KNOCK_PORTS} are supported",
                        list.len()
                    ),
                );
            } else if set.contains(&0) {
                c.at(&span, "knock_ports contains 0: use ports 1-65535");
            } else if set.len() != list.len() {
                c.at(
                    &span,
                    "knock_ports lists a port twice: remove the duplicate",
                );
            }
            set.into_iter().collect()
        }
    };

    let interfaces = match s.interfaces {
        None => Vec::new(),
        Some(ifs) => {
            let span = ifs.span();
            let list = ifs.into_inner();
            if list.len() > MAX_INTERFACES {
                c.at(
                    &span,
                    format!("at most {MAX_INTERFACES} interfaces are supported"),
                );
            }
            let mut seen = HashSet::new();
            for name in &list {
                if let Err(msg) = check_interface(name) {
                    c.at(&span, msg);
                } else if !seen.insert(name.as_str()) {
                    c.at(
                        &span,
                        format!("interface {name:?} is listed twice: remove one"),
                    );
                }
            }
            list
        }
    };

    let capture = s.capture.map_or(Ok(CaptureChoice::Auto), |v| {
        let span = v.span();
        v.get_ref()
            .parse::<CaptureChoice>()
            .map_err(|e| c.at(&span, e))
    });
    let xdp_mode = s
        .xdp_mode
        .map_or(Ok(XdpModeChoice::Auto), |v| match v.get_ref().as_str() {
            "auto" => Ok(XdpModeChoice::Auto),
            "native" => Ok(XdpModeChoice::Native),
            "skb" => Ok(XdpModeChoice::Skb),
            other => {
                c.at(
                    &v.span(),
                    format!("unknown xdp_mode {other:?}: use auto, native or skb"),
                );
                Err(())
            }
        });

    let state_dir = absolute_path(&mut c, s.state_dir, DEFAULT_STATE_DIR, "state_dir");
    let control_socket = absolute_path(
        &mut c,
        s.control_socket,
        DEFAULT_CONTROL_SOCKET,
        "control_socket",
    );
    if control_socket.as_os_str().len() > 100 {
        // sun_path is 108 bytes including the terminating NUL.
        c.problems.push(Problem {
            line: None,
            message: format!(
                "control_socket path {} is too long for a Unix socket: keep it under 100 bytes",
                control_socket.display()
            ),
        });
    }
    let control_group = s.control_group.and_then(|g| {
        let span = g.span();
        let name = g.into_inner();
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            c.at(
                &span,
                format!("control_group {name:?} is not a valid group name"),
            );
            None
        } else {
            Some(name)
        }
    });

    let freshness = duration_in(
        &mut c,
        s.freshness,
        crate::protocol::verify::DEFAULT_FRESHNESS,
        FRESHNESS_RANGE,
        "freshness",
    );
    let default_access = duration_in(
        &mut c,
        s.default_access,
        DEFAULT_ACCESS,
        ACCESS_RANGE,
        "default_access",
    );

    let limits = Limits {
        per_source_rate: positive(&mut c, raw.limits.per_source_rate, 10, "per_source_rate"),
        per_source_burst: positive(&mut c, raw.limits.per_source_burst, 20, "per_source_burst"),
        global_rate: positive(&mut c, raw.limits.global_rate, 10_000, "global_rate"),
    };
    let log = LogLimits {
        per_source_per_minute: positive(
            &mut c,
            raw.log.rejections_per_source_per_minute,
            10,
            "rejections_per_source_per_minute",
        ),
        per_second: positive(
            &mut c,
            raw.log.rejections_per_second,
            20,
            "rejections_per_second",
        ),
    };

    if raw.users.len() > MAX_USERS {
        c.problems.push(Problem {
            line: None,
            message: format!(
                "{} users is more than the {MAX_USERS} supported",
                raw.users.len()
            ),
        });
    }
    let mut users = Vec::with_capacity(raw.users.len().min(MAX_USERS));
    let mut ids = HashSet::new();
    let mut nicknames = HashSet::new();
    for user in raw.users {
        let line = c.line(&user.span());
        let Some(u) = validate_user(&mut c, user.into_inner(), default_access, &knock_ports) else {
            continue;
        };
        if !ids.insert(u.id) {
            c.problems.push(Problem {
                line: Some(line),
                message: format!(
                    "user id {} is used twice: every user needs its own id (run `capyknock keygen`)",
                    u.id
                ),
            });
        }
        if !nicknames.insert(u.nickname.to_ascii_lowercase()) {
            c.problems.push(Problem {
                line: Some(line),
                message: format!(
                    "nickname {:?} is used twice: give each user a different nickname",
                    u.nickname
                ),
            });
        }
        users.push(u);
    }

    let firewall = match raw.firewall {
        None => FirewallConfig::default(),
        Some(fw) => {
            let span = fw.span();
            let fw = fw.into_inner();
            if let Err(e) = fw.validate() {
                c.at(&span, format!("{e} (docs/CONFIG.md, section [firewall])"));
            }
            fw
        }
    };

    match (capture, xdp_mode) {
        (Ok(capture), Ok(xdp_mode)) if c.problems.is_empty() => Ok(Settings {
            path: path.to_owned(),
            knock_ports,
            interfaces,
            capture,
            xdp_mode,
            state_dir,
            control_socket,
            control_group,
            freshness,
            default_access,
            revoke_removed_users: s.revoke_removed_users.unwrap_or(false),
            limits,
            log,
            firewall,
            users,
        }),
        _ => Err(c.problems),
    }
}

fn validate_user(
    c: &mut Checker<'_>,
    raw: RawUser,
    default_access: Duration,
    knock_ports: &[u16],
) -> Option<User> {
    const KEYGEN: &str =
        "copy it again from the `capyknock keygen` output, or run keygen to create a new user";
    let before = c.problems.len();
    // The parse errors below never echo the value: it may be a secret.
    let id = raw.id.get_ref().parse::<UserId>();
    if let Err(e) = &id {
        c.at(&raw.id.span(), format!("{e}; {KEYGEN}"));
    }
    let nickname = raw.nickname.get_ref().clone();
    if let Err(msg) = check_nickname(&nickname) {
        c.at(&raw.nickname.span(), msg);
    }
    let key = UserKey::from_base64(raw.key.get_ref());
    if let Err(e) = &key {
        c.at(&raw.key.span(), format!("key: {e}; {KEYGEN}"));
    }
    let totp = TotpSecret::from_base32(raw.totp_secret.get_ref());
    if let Err(e) = &totp {
        c.at(
            &raw.totp_secret.span(),
            format!("totp_secret: {e}; {KEYGEN}"),
        );
    }
    let totp_mode = match raw.totp_mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("prompt") => TotpMode::Prompt,
        Some("derived") => TotpMode::Derived,
        Some(other) => {
            if let Some(m) = &raw.totp_mode {
                c.at(
                    &m.span(),
                    format!(
                        "unknown totp_mode {other:?}: use \"prompt\" (authenticator app) or \"derived\" (machine-to-machine)"
                    ),
                );
            }
            TotpMode::Prompt
        }
    };
    let allow_ip = match raw.allow_ip.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("source") => AllowIp::Source,
        Some("payload") => AllowIp::Payload,
        Some("require-match") => AllowIp::RequireMatch,
        Some(other) => {
            if let Some(m) = &raw.allow_ip {
                c.at(
                    &m.span(),
                    format!(
                        "unknown allow_ip {other:?}: use \"source\", \"payload\" or \"require-match\""
                    ),
                );
            }
            AllowIp::Source
        }
    };
    let ports_span = raw.ports.span();
    let raw_ports = raw.ports.into_inner();
    let mut ports = BTreeSet::new();
    if raw_ports.is_empty() {
        c.at(
            &ports_span,
            format!("user {nickname:?} has no ports: list at least one, e.g. [\"tcp/22\"]"),
        );
    }
    if raw_ports.len() > MAX_USER_PORTS {
        c.at(
            &ports_span,
            format!("at most {MAX_USER_PORTS} ports per user"),
        );
    }
    for p in &raw_ports {
        match p.get_ref().parse::<PortSpec>() {
            Ok(spec) => {
                if spec.protocol == Protocol::Udp && knock_ports.contains(&spec.port) {
                    c.at(
                        &p.span(),
                        format!(
                            "{spec} is a knock port: knock ports are never opened; pick another port"
                        ),
                    );
                } else if !ports.insert(spec) {
                    c.at(&p.span(), format!("{spec} is listed twice: remove one"));
                }
            }
            Err(e) => c.at(&p.span(), e.to_string()),
        }
    }
    let access = duration_in(c, raw.access, default_access, ACCESS_RANGE, "access");
    if c.problems.len() != before {
        return None;
    }
    Some(User {
        id: id.ok()?,
        nickname,
        key: key.ok()?,
        totp: totp.ok()?,
        totp_mode,
        ports: ports.into_iter().collect(),
        access,
        allow_ip,
    })
}

/// A nickname is 1-32 characters of `A-Z a-z 0-9 . _ @ -`: safe in logs (no spaces, quotes or
/// control characters) and in firewall rule comments.
pub fn check_nickname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NICKNAME_LEN {
        return Err(format!(
            "nickname must be 1 to {MAX_NICKNAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        return Err(format!(
            "nickname {name:?} may only use letters, digits, '.', '_', '@' and '-'"
        ));
    }
    Ok(())
}

fn check_interface(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'))
    {
        return Err(format!(
            "interface name {name:?} is not valid: 1-15 characters such as \"eth0\""
        ));
    }
    Ok(())
}

fn absolute_path(
    c: &mut Checker<'_>,
    value: Option<Spanned<String>>,
    default: &str,
    key: &str,
) -> PathBuf {
    match value {
        None => PathBuf::from(default),
        Some(v) => {
            let span = v.span();
            let p = PathBuf::from(v.into_inner());
            if !p.is_absolute() || p.as_os_str().is_empty() {
                c.at(
                    &span,
                    format!("{key} must be an absolute path such as {default:?}"),
                );
            }
            p
        }
    }
}

fn duration_in(
    c: &mut Checker<'_>,
    value: Option<Spanned<ConfigDuration>>,
    default: Duration,
    (min, max): (Duration, Duration),
    key: &str,
) -> Duration {
    match value {
        None => default,
        Some(v) => {
            let d = v.get_ref().0;
            if d < min || d > max || d.subsec_nanos() != 0 {
                c.at(
                    &v.span(),
                    format!(
                        "{key} must be whole seconds between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
            }
            d
        }
    }
}

fn positive(c: &mut Checker<'_>, value: Option<Spanned<u32>>, default: u32, key: &str) -> u32 {
    match value {
        None => default,
        Some(v) => {
            if *v.get_ref() == 0 {
                c.at(&v.span(), format!("{key} must be at least 1"));
            }
            *v.get_ref()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing: the reference file and new user entries (used by `capyknock keygen`).
// ---------------------------------------------------------------------------------------------

/// The reference configuration, contrib/server.example.toml: complete, every key commented with
/// its default, no users.
pub const EXAMPLE: &str = include_str!("../../../contrib/server.example.toml");

/// The line of [`EXAMPLE`] that [`render_default`] rewrites.
const KNOCK_PORTS_LINE: &str = "knock_ports = [62201]";

/// A complete commented configuration with no users, listening on `knock_port`.
#[must_use]
pub fn render_default(knock_port: u16) -> String {
    EXAMPLE.replacen(
        KNOCK_PORTS_LINE,
        &format!("knock_ports = [{knock_port}]"),
        1,
    )
}

/// The `[[user]]` block for `user`, with a leading blank line and a comment naming it. Holds
/// the user's secrets: write it only to the 0600 config file ([`add_user`] does).
#[must_use]
pub fn render_user(user: &User) -> String {
    use std::fmt::Write as _;
    let ports: Vec<String> = user.ports.iter().map(|p| format!("\"{p}\"")).collect();
    let mode = match user.totp_mode {
        TotpMode::Prompt => "prompt",
        TotpMode::Derived => "derived",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "\n# {nick}, added by capyknock keygen.\n[[user]]\nid = \"{id}\"\nnickname = \"{nick}\"\n\
         key = \"{key}\"\ntotp_secret = \"{secret}\"\ntotp_mode = \"{mode}\"\nports = [{ports}]\n\
         access = \"{access}\"\nallow_ip = \"{allow_ip}\"\n",
        nick = user.nickname,
        id = user.id,
        key = user.key.to_base64_secret(),
        secret = user.totp.to_base32_secret(),
        ports = ports.join(", "),
        access = humantime::format_duration(user.access),
        allow_ip = user.allow_ip.as_str(),
    );
    out
}

/// Why a user could not be added to a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    /// The existing file (or the result) is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Appends `user` to the configuration at `path`, or creates a complete commented configuration
/// (knock port `knock_port`) holding it when `path` does not exist. The result is validated
/// before it is written (a duplicate id or nickname is refused), and written atomically with
/// mode 0600. A running daemon picks it up on `capyknock reload`.
pub fn add_user(path: &Path, user: &User, knock_port: u16) -> Result<Settings, AddUserError> {
    let existing = match std::fs::metadata(path) {
        Ok(_) => Some(read_checked(path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }
            .into());
        }
    };
    let mut text = match existing {
        Some(text) => {
            parse(path, &text)?;
            text
        }
        None => render_default(knock_port),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&render_user(user));
    let settings = parse(path, &text)?;
    write_private(path, text.as_bytes()).map_err(|source| AddUserError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(settings)
}

/// Writes `bytes` to `path` through a 0600 temporary file in the same directory, fsync and
/// rename, so a crash leaves the old file or the new one, never half of one.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("config"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut file = opts.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Best effort: make the rename itself durable.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = r#"
[[user]]
id = "00112233445566778899aabbccddeeff"
nickname = "alice"
key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
totp_secret = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT"
ports = ["tcp/22", "udp/51820"]
"#;

    fn p(text: &str) -> Result<Settings, ConfigError> {
        parse(Path::new("/etc/capyknock/server.toml"), text)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match p(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn new_user(nick: &str, id: &str) -> User {
        User {
            id: id.parse().unwrap(),
            nickname: nick.into(),
            key: UserKey::from_bytes(core::array::from_fn(|i| i as u8)),
            totp: TotpSecret::from_base32("AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT").unwrap(),
            totp_mode: TotpMode::Derived,
            ports: vec![PortSpec::tcp(22), PortSpec::tcp(443)],
            access: Duration::from_mins(10),
            allow_ip: AllowIp::RequireMatch,
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = p("").unwrap();
        assert_eq!(
            s.knock_ports,
            vec![capyknock_common::wire::DEFAULT_KNOCK_PORT]
        );
        assert_eq!(s.capture, CaptureChoice::Auto);
        assert_eq!(s.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(s.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(s.freshness, crate::protocol::verify::DEFAULT_FRESHNESS);
        assert_eq!(s.default_access, DEFAULT_ACCESS);
        assert!(!s.revoke_removed_users);
        assert!(s.users.is_empty());
    }

    #[test]
    fn example_is_valid_and_states_the_defaults() {
        let s = p(EXAMPLE).unwrap();
        let d = p("").unwrap();
        assert_eq!(s.knock_ports, d.knock_ports);
        assert_eq!(s.interfaces, d.interfaces);
        assert_eq!(s.capture, d.capture);
        assert_eq!(s.xdp_mode, d.xdp_mode);
        assert_eq!(s.state_dir, d.state_dir);
        assert_eq!(s.control_socket, d.control_socket);
        assert_eq!(s.control_group, d.control_group);
        assert_eq!(s.freshness, d.freshness);
        assert_eq!(s.default_access, d.default_access);
        assert_eq!(s.revoke_removed_users, d.revoke_removed_users);
        assert_eq!(s.limits, d.limits);
        assert_eq!(s.log, d.log);
        assert_eq!(s.firewall, FirewallConfig::default());
        assert!(s.users.is_empty());
    }

    #[test]
    fn example_commented_user_is_valid_when_uncommented() {
        let start = EXAMPLE.find("# [[user]]").unwrap();
        let mut user = String::new();
        for l in EXAMPLE[start..].lines().filter(|l| !l.starts_with("# #")) {
            user.push_str(l.trim_start_matches("# "));
            user.push('\n');
        }
        let s = p(&format!("{}\n{user}", &EXAMPLE[..start])).unwrap();
        assert_eq!(s.users.len(), 1);
        let u = &s.users[0];
        assert_eq!(u.nickname, "alice");
        assert_eq!(
            u.key,
            UserKey::from_bytes(core::array::from_fn(|i| i as u8))
        );
        assert_eq!(
            u.totp,
            TotpSecret::from_base32("AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT").unwrap()
        );
        assert_eq!(u.access, Duration::from_mins(5));
    }

    #[test]
    fn user_fields_parse() {
        let s = p(ALICE).unwrap();
        let u = &s.users[0];
        assert_eq!(u.id.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(u.ports, vec![PortSpec::tcp(22), PortSpec::udp(51820)]);
        assert_eq!(u.totp_mode, TotpMode::Prompt);
        assert_eq!(u.allow_ip, AllowIp::Source);
        assert_eq!(u.access, DEFAULT_ACCESS);
    }

    #[test]
    fn debug_hides_secrets() {
        let s = p(ALICE).unwrap();
        let dbg = format!("{:?}", s.users[0]);
        assert!(!dbg.contains("AAECAwQF"), "{dbg}");
        assert!(!dbg.contains("[0, 1, 2"), "{dbg}");
        let dbg = format!("{:?}", new_user("bob", "ff112233445566778899aabbccddeeff"));
        assert!(
            !dbg.contains("AAECAwQF") && !dbg.contains("AAAQEAYE"),
            "{dbg}"
        );
    }

    #[test]
    fn durations_as_text_or_seconds() {
        let s = p("[server]\nfreshness = 120\ndefault_access = \"1h 30m\"\n").unwrap();
        assert_eq!(s.freshness, Duration::from_mins(2));
        assert_eq!(s.default_access, Duration::from_mins(90));
        let pr = problems("[server]\nfreshness = \"soon\"\n");
        assert_eq!(pr[0].line, Some(2));
        assert!(pr[0].message.contains("\"90s\""), "{}", pr[0].message);
        let pr = problems("[server]\n\ndefault_access = \"30d\"\n");
        assert_eq!(pr[0].line, Some(3));
        assert!(
            pr[0].message.contains("between 1s and 7days"),
            "{}",
            pr[0].message
        );
        assert!(!problems("[server]\nfreshness = -5\n").is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let pr = problems("[server]\nknock_ports = [1]\nknock_port = 5\n");
        assert_eq!(pr.len(), 1);
        assert_eq!(pr[0].line, Some(3));
        assert!(pr[0].message.contains("knock_port"), "{}", pr[0].message);
        assert!(pr[0].message.contains("spelling"), "{}", pr[0].message);
        let pr = problems(&format!("{ALICE}colour = \"red\"\n"));
        assert_eq!(pr[0].line, Some(8));
        let pr = problems("[serveur]\n");
        assert_eq!(pr[0].line, Some(1));
        let pr = problems("[server]\n\n[firewall]\nbackend = \"iptables\"\n");
        assert_eq!(pr[0].line, Some(4), "{pr:?}");
        let pr = problems("[firewall]\ntable = \"bad table\"\n");
        assert_eq!(pr[0].line, Some(1), "{pr:?}");
        assert!(pr[0].message.contains("table"), "{pr:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let pr = problems("[server]\nstate_dir = \"/x\n");
        assert_eq!(pr[0].line, Some(2));
        let err = p("[server]\nstate_dir = \"/x\n").unwrap_err().to_string();
        assert!(err.contains("/etc/capyknock/server.toml:2:"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[server]\nknock_ports = []\ncapture = \"ebpf\"\nstate_dir = \"relative\"\n\
                    [[user]]\nid = \"XYZ\"\nnickname = \"has space\"\nkey = \"short\"\n\
                    totp_secret = \"abc\"\nports = [\"tcp/0\", \"udp/62201\"]\n\
                    totp_mode = \"sms\"\nallow_ip = \"any\"\n";
        let pr = problems(text);
        let lines: Vec<_> = pr.iter().map(|p| p.line.unwrap()).collect();
        assert_eq!(lines, vec![2, 3, 4, 6, 7, 8, 9, 11, 12, 10], "{pr:#?}");
        let text = ALICE.replace("udp/51820", "udp/62201");
        let pr = problems(&text);
        assert!(pr[0].message.contains("knock port"), "{pr:?}");
    }

    #[test]
    fn secrets_never_appear_in_messages() {
        let text = ALICE.replace(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "c2VjcmV0LXZhbHVl",
        );
        let text = text.replace("AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT", "SECRETVALUEBASE32");
        let err = p(&text).unwrap_err().to_string();
        assert!(
            !err.contains("c2VjcmV0") && !err.contains("SECRETVALUE"),
            "{err}"
        );
        assert!(err.contains("base64") && err.contains("base32"), "{err}");
    }

    #[test]
    fn duplicates_are_refused() {
        let text = format!("{ALICE}{}", ALICE.replace("alice", "bob"));
        let pr = problems(&text);
        assert_eq!(pr.len(), 1, "{pr:?}");
        assert!(pr[0].message.contains("used twice"));
        let text = format!(
            "{ALICE}{}",
            ALICE
                .replace("00112233", "99112233")
                .replace("alice", "ALICE")
        );
        let pr = problems(&text);
        assert!(pr[0].message.contains("nickname"), "{pr:?}");
        let pr = problems(&ALICE.replace("\"udp/51820\"", "\"tcp/22\""));
        assert!(pr[0].message.contains("twice"), "{pr:?}");
        let pr = problems("[server]\nknock_ports = [5, 5]\n");
        assert!(pr[0].message.contains("twice"), "{pr:?}");
    }

    #[test]
    fn rendered_default_and_user_round_trip() {
        let text = render_default(40000);
        let s = p(&text).unwrap();
        assert_eq!(s.knock_ports, vec![40000]);
        let text = format!(
            "{text}{}",
            render_user(&new_user("bob", "ff112233445566778899aabbccddeeff"))
        );
        let s = p(&text).unwrap();
        let u = &s.users[0];
        assert_eq!(u.nickname, "bob");
        assert_eq!(u.id.to_string(), "ff112233445566778899aabbccddeeff");
        assert_eq!(u.totp_mode, TotpMode::Derived);
        assert_eq!(u.allow_ip, AllowIp::RequireMatch);
        assert_eq!(u.key, new_user("x", "ff112233445566778899aabbccddeeff").key);
        assert_eq!(u.access, Duration::from_mins(10));
        assert_eq!(u.ports, vec![PortSpec::tcp(22), PortSpec::tcp(443)]);
    }

    #[cfg(unix)]
    #[test]
    fn add_user_creates_then_appends_privately() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ck-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/server.toml");
        let s = add_user(
            &path,
            &new_user("bob", "ff112233445566778899aabbccddeeff"),
            50000,
        )
        .unwrap();
        assert_eq!(s.knock_ports, vec![50000]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = add_user(
            &path,
            &new_user("carol", "ee112233445566778899aabbccddeeff"),
            1,
        )
        .unwrap();
        assert_eq!(s.knock_ports, vec![50000]);
        assert_eq!(s.users.len(), 2);
        assert_eq!(load(&path).unwrap().users.len(), 2);
        // A duplicate is refused and the file is left as it was.
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(
            add_user(
                &path,
                &new_user("bob", "dd112233445566778899aabbccddeeff"),
                1
            )
            .is_err()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // Group-readable files are refused with the chmod to run.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        assert!(
            add_user(
                &path,
                &new_user("dave", "cc112233445566778899aabbccddeeff"),
                1
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_socket_of_reads_partial_files() {
        let dir = std::env::temp_dir().join(format!("ck-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[server]\ncontrol_socket = \"/tmp/x.sock\"\n[[user]]\n",
        )
        .unwrap();
        assert_eq!(control_socket_of(&path), Path::new("/tmp/x.sock"));
        assert_eq!(
            control_socket_of(&dir.join("missing.toml")),
            Path::new(DEFAULT_CONTROL_SOCKET)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,400}") {
            let _ = p(&text);
        }
    }
}
