//! From [`RawConfig`] to [`Settings`]: every key checked in file order, each with its default
//! beside it, every problem collected with its line (never the value of a secret).

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::{
    ACCESS_RANGE, ConfigDuration, DEFAULT_ACCESS, DEFAULT_CONTROL_SOCKET, FRESHNESS_RANGE, Limits,
    LogLimits, MAX_INTERFACES, MAX_KNOCK_PORTS, MAX_PROTECTED_PORTS, MAX_USER_PORTS, MAX_USERS,
    RawConfig, RawInterfaces, RawUser, Settings, default_state_dir,
};
use crate::{
    capture::{CaptureMode, XdpAttachMode},
    conf::{Checker, Problem, check_nickname},
    firewall::FirewallConfig,
    ports::{PortSpec, Protocol},
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        users::{AllowIp, TotpMode, User},
    },
    server::{
        metrics::Listen,
        realtime::{PRIORITY_RANGE, RealtimePriority},
    },
};

/// Checks `raw` (parsed from `text`, which gives the lines) into settings, or every problem.
#[expect(
    clippy::too_many_lines,
    reason = "one linear pass over the keys, in file order, each with its default beside it"
)]
pub fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Settings, Vec<Problem>> {
    let mut c = Checker::new(text);
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
            let list = match ifs.into_inner() {
                RawInterfaces::List(list) => list,
                RawInterfaces::Word(word) if word == "all" => Vec::new(),
                RawInterfaces::Word(word) => {
                    c.at(
                        &span,
                        format!(
                            "interfaces = {word:?}: write \"all\" or a list such as \
                             [\"eth0\", \"veth*\"]"
                        ),
                    );
                    Vec::new()
                }
            };
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

    let capture = s.capture.map_or(Ok(CaptureMode::Auto), |v| {
        v.get_ref().parse::<CaptureMode>().map_err(|_| {
            c.at(
                &v.span(),
                format!(
                    "unknown capture mode {:?}: use auto, xdp (Linux), pcap (Unix), raw (Windows) or udp",
                    v.get_ref()
                ),
            );
        })
    });
    let xdp_mode = s.xdp_mode.map_or(Ok(None), |v| match v.get_ref().as_str() {
        "auto" => Ok(None),
        other => other.parse::<XdpAttachMode>().map(Some).map_err(|_| {
            c.at(
                &v.span(),
                format!("unknown xdp_mode {other:?}: use auto, native, skb or tc"),
            );
        }),
    });

    let state_dir = absolute_path(&mut c, s.state_dir, &default_state_dir(), "state_dir");
    let control_socket = absolute_path(
        &mut c,
        s.control_socket,
        Path::new(DEFAULT_CONTROL_SOCKET),
        "control_socket",
    );
    if control_socket.as_os_str().len() > 100 {
        // sun_path is 108 bytes including the terminating NUL.
        c.at_line(
            None,
            format!(
                "control_socket path {} is too long for a Unix socket: keep it under 100 bytes",
                control_socket.display()
            ),
        );
    }
    let control_group = s.control_group.and_then(|g| {
        let span = g.span();
        let name = g.into_inner();
        if valid_group_name(&name, cfg!(windows)) {
            Some(name)
        } else {
            c.at(
                &span,
                format!("control_group {name:?} is not a valid group name"),
            );
            None
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
    // Off unless asked for; only loopback or a Unix socket (`metrics::Listen`).
    let metrics_listen = s.metrics_listen.and_then(|v| {
        v.get_ref()
            .parse::<Listen>()
            .map_err(|e| c.at(&v.span(), e.to_string()))
            .ok()
    });
    // Off unless asked for (`server::realtime`).
    let realtime_priority = s.realtime_priority.and_then(|v| {
        RealtimePriority::new(*v.get_ref()).or_else(|| {
            c.at(
                &v.span(),
                format!(
                    "realtime_priority = {} is out of range: use a SCHED_FIFO priority from {} \
                     to {} (10 is plenty), or leave it out for normal priority",
                    v.get_ref(),
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            );
            None
        })
    });
    let protect = s
        .protect
        .map(|list| protect_list(&mut c, list, &knock_ports));

    let limits = Limits {
        per_source_rate: positive(&mut c, raw.limits.per_source_rate, 10, "per_source_rate"),
        per_source_burst: positive(&mut c, raw.limits.per_source_burst, 20, "per_source_burst"),
        per_user_rate: positive(&mut c, raw.limits.per_user_rate, 10, "per_user_rate"),
        per_user_burst: positive(&mut c, raw.limits.per_user_burst, 20, "per_user_burst"),
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
        c.at_line(
            None,
            format!(
                "{} users is more than the {MAX_USERS} supported",
                raw.users.len()
            ),
        );
    }
    let cluster = raw.cluster.and_then(|section| {
        let span = section.span();
        crate::server::cluster::config::validate(&mut c, section.into_inner(), &span)
    });

    let mut user_scopes = std::collections::BTreeMap::new();
    let mut users = Vec::with_capacity(raw.users.len().min(MAX_USERS));
    let mut ids = HashSet::new();
    let mut nicknames = HashSet::new();
    for user in raw.users {
        let line = c.line(&user.span());
        let mut user = user.into_inner();
        let scope = user.scope.take();
        let Some(u) = validate_user(
            &mut c,
            user,
            default_access,
            &knock_ports,
            protect.as_deref(),
        ) else {
            continue;
        };
        if let Some(group) = scope
            .and_then(|s| crate::server::cluster::config::user_scope(&mut c, &s, cluster.as_ref()))
        {
            user_scopes.insert(u.id, group);
        }
        if !ids.insert(u.id) {
            c.at_line(
                Some(line),
                format!(
                    "user id {} is used twice: every user needs its own id (run `capyknock keygen`)",
                    u.id
                ),
            );
        }
        if !nicknames.insert(u.nickname.to_ascii_lowercase()) {
            c.at_line(
                Some(line),
                format!(
                    "nickname {:?} is used twice: give each user a different nickname",
                    u.nickname
                ),
            );
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
        (Ok(capture), Ok(xdp_mode)) if c.is_clean() => Ok(Settings {
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
            privsep: s.privsep,
            protect,
            metrics_listen,
            realtime_priority,
            limits,
            log,
            firewall,
            cluster,
            user_scopes,
            users,
        }),
        _ => Err(c.into_problems()),
    }
}

/// `protect`: port specs, never a knock port (always dropped anyway), no duplicates; sorted.
fn protect_list(
    c: &mut Checker<'_>,
    list: Spanned<Vec<Spanned<String>>>,
    knock_ports: &[u16],
) -> Vec<PortSpec> {
    let span = list.span();
    let list = list.into_inner();
    if list.len() > MAX_PROTECTED_PORTS {
        c.at(
            &span,
            format!(
                "protect lists {} ports; at most {MAX_PROTECTED_PORTS}",
                list.len()
            ),
        );
    }
    let mut ports = BTreeSet::new();
    for p in &list {
        match p.get_ref().parse::<PortSpec>() {
            Ok(spec) if spec.protocol == Protocol::Udp && knock_ports.contains(&spec.port) => {
                c.at(
                    &p.span(),
                    format!(
                        "{spec} is a knock port: knock ports are always dropped; remove it from \
                         protect"
                    ),
                );
            }
            Ok(spec) => {
                if !ports.insert(spec) {
                    c.at(&p.span(), format!("{spec} is listed twice: remove one"));
                }
            }
            Err(e) => c.at(&p.span(), e.to_string()),
        }
    }
    ports.into_iter().collect()
}

fn validate_user(
    c: &mut Checker<'_>,
    raw: RawUser,
    default_access: Duration,
    knock_ports: &[u16],
    protect: Option<&[PortSpec]>,
) -> Option<User> {
    const KEYGEN: &str =
        "copy it again from the `capyknock keygen` output, or run keygen to create a new user";
    let before = c.count();
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
    let totp_mode = raw.totp_mode.as_ref().map_or(TotpMode::Prompt, |m| {
        m.get_ref().parse::<TotpMode>().unwrap_or_else(|_| {
            c.at(
                &m.span(),
                format!(
                    "unknown totp_mode {:?}: use \"prompt\" (authenticator app) or \"derived\" \
                     (machine-to-machine)",
                    m.get_ref()
                ),
            );
            TotpMode::Prompt
        })
    });
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
    let ports = user_ports(c, raw.ports, &nickname, knock_ports, protect);
    let access = duration_in(c, raw.access, default_access, ACCESS_RANGE, "access");
    if c.count() != before {
        return None;
    }
    Some(User {
        id: id.ok()?,
        nickname,
        key: key.ok()?,
        totp: totp.ok()?,
        totp_mode,
        ports,
        access,
        allow_ip,
    })
}

/// A user's `ports`: 1 to [`MAX_USER_PORTS`] port specs, no duplicates, never a knock port,
/// inside `protect` when there is one; sorted.
fn user_ports(
    c: &mut Checker<'_>,
    raw: Spanned<Vec<Spanned<String>>>,
    nickname: &str,
    knock_ports: &[u16],
    protect: Option<&[PortSpec]>,
) -> Vec<PortSpec> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.is_empty() {
        c.at(
            &span,
            format!("user {nickname:?} has no ports: list at least one, e.g. [\"tcp/22\"]"),
        );
    }
    if raw.len() > MAX_USER_PORTS {
        c.at(&span, format!("at most {MAX_USER_PORTS} ports per user"));
    }
    let mut ports = BTreeSet::new();
    for p in &raw {
        match p.get_ref().parse::<PortSpec>() {
            Ok(spec) => {
                if spec.protocol == Protocol::Udp && knock_ports.contains(&spec.port) {
                    c.at(
                        &p.span(),
                        format!(
                            "{spec} is a knock port: knock ports are never opened; pick another port"
                        ),
                    );
                } else if protect.is_some_and(|list| !list.contains(&spec)) {
                    c.at(
                        &p.span(),
                        format!(
                            "{spec} is not in [server] protect: the firewall would not close it, \
                             so opening it means nothing; add it to protect or remove it here"
                        ),
                    );
                } else if !ports.insert(spec) {
                    c.at(&p.span(), format!("{spec} is listed twice: remove one"));
                }
            }
            Err(e) => c.at(&p.span(), e.to_string()),
        }
    }
    ports.into_iter().collect()
}

/// An interface name, or a pattern: a prefix followed by `*` (`"veth*"`, `"*"`).
fn check_interface(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix('*').unwrap_or(name);
    if (stem.is_empty() && stem.len() == name.len())
        || name.len() > 15
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'))
    {
        return Err(format!(
            "interface name {name:?} is not valid: 1-15 characters such as \"eth0\", or a \
             prefix and `*` such as \"veth*\""
        ));
    }
    Ok(())
}

fn absolute_path(
    c: &mut Checker<'_>,
    value: Option<Spanned<String>>,
    default: &Path,
    key: &str,
) -> PathBuf {
    match value {
        None => default.to_owned(),
        Some(v) => {
            let span = v.span();
            let p = PathBuf::from(v.into_inner());
            if !p.is_absolute() || p.as_os_str().is_empty() {
                c.at(
                    &span,
                    format!(
                        "{key} must be an absolute path such as \"{}\"",
                        default.display()
                    ),
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

/// Whether `name` can name the control group: a Unix group name (letters, digits, `_`, `-`,
/// `.`, at most 32 bytes), or on Windows an account name as `LookupAccountNameW` takes it
/// (`Remote Admins`, `CORP\Ops`): at most 256 characters, none of the characters Windows
/// refuses in names (`"/[]:|<>+=;?*,@` and control characters), one `DOMAIN\` prefix at most,
/// and not only dots and spaces.
fn valid_group_name(name: &str, windows: bool) -> bool {
    if !windows {
        return !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    }
    let account = match name.split_once('\\') {
        Some((domain, account)) if !domain.trim().is_empty() => account,
        Some(_) => return false,
        None => name,
    };
    name.chars().count() <= 256
        && !account.trim_matches(|c| c == '.' || c == ' ').is_empty()
        && !account.contains('\\')
        && name
            .chars()
            .all(|c| !c.is_control() && !"\"/[]:|<>+=;?*,@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::config::{ConfigError, parse};

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

    #[test]
    fn interfaces_take_names_and_prefix_patterns() {
        let s = p("[server]\ninterfaces = [\"eth0\", \"veth*\", \"*\"]\n").unwrap();
        assert_eq!(s.interfaces, ["eth0", "veth*", "*"]);
        assert!(
            p("[server]\ninterfaces = \"all\"\n")
                .unwrap()
                .interfaces
                .is_empty()
        );
        assert!(
            p("[server]\ninterfaces = []\n")
                .unwrap()
                .interfaces
                .is_empty()
        );
        let found = problems("[server]\ninterfaces = \"eth0\"\n");
        assert!(found[0].message.contains("write \"all\""), "{found:?}");
        assert_eq!(found[0].line, Some(2));
        for bad in [
            "\"\"",
            "\"a*b\"",
            "\"**\"",
            "\"eth 0\"",
            "\"sixteen-chars-xx\"",
        ] {
            let found = problems(&format!("[server]\ninterfaces = [{bad}]\n"));
            assert!(
                found.iter().any(|p| p.message.contains("is not valid")),
                "{bad}: {found:?}"
            );
        }
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
        let s = p(&ALICE.replace("ports =", "totp_mode = \"derived\"\nports =")).unwrap();
        assert_eq!(s.users[0].totp_mode, TotpMode::Derived);
    }

    #[test]
    fn enum_spellings() {
        for (text, mode) in [
            ("auto", CaptureMode::Auto),
            ("xdp", CaptureMode::Xdp),
            ("pcap", CaptureMode::Pcap),
            ("udp", CaptureMode::Udp),
        ] {
            let s = p(&format!("[server]\ncapture = \"{text}\"\n")).unwrap();
            assert_eq!(s.capture, mode);
            assert_eq!(mode.as_str(), text);
        }
        for (text, mode) in [
            ("auto", None),
            ("native", Some(XdpAttachMode::Native)),
            ("skb", Some(XdpAttachMode::Skb)),
            ("tc", Some(XdpAttachMode::Tc)),
        ] {
            let s = p(&format!("[server]\nxdp_mode = \"{text}\"\n")).unwrap();
            assert_eq!(s.xdp_mode, mode);
        }
        for bad in [
            "capture = \"XDP\"",
            "xdp_mode = \"driver\"",
            "xdp_mode = \"Auto\"",
        ] {
            assert_eq!(problems(&format!("[server]\n{bad}\n"))[0].line, Some(2));
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let s = p(ALICE).unwrap();
        let dbg = format!("{:?}", s.users[0]);
        assert!(!dbg.contains("AAECAwQF"), "{dbg}");
        assert!(!dbg.contains("[0, 1, 2"), "{dbg}");
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
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[server]\nknock_ports = []\ncapture = \"ebpf\"\nstate_dir = \"relative\"\n\
                    [[user]]\nid = \"XYZ\"\nnickname = \"has space\"\nkey = \"short\"\n\
                    totp_secret = \"abc\"\nports = [\"tcp/0\", \"udp/62201\"]\n\
                    totp_mode = \"sms\"\nallow_ip = \"any\"\n";
        let pr = problems(text);
        let lines: Vec<_> = pr.iter().map(|p| p.line.unwrap()).collect();
        assert_eq!(lines, vec![2, 3, 4, 6, 7, 8, 9, 10, 11, 12], "{pr:#?}");
        let text = ALICE.replace("udp/51820", "udp/62201");
        let pr = problems(&text);
        assert!(pr[0].message.contains("knock port"), "{pr:?}");
    }

    #[test]
    fn shape_and_value_problems_are_reported_together() {
        // Issue 14: an unknown key, a bad capture word and tcp/99999 in one file: all three.
        let text = format!(
            "[server]\nbogus = 1\ncapture = \"nonsense\"\n{}",
            ALICE.replace("tcp/22", "tcp/99999")
        );
        let pr = problems(&text);
        let lines: Vec<_> = pr.iter().map(|p| p.line.unwrap_or(0)).collect();
        assert_eq!(lines, vec![2, 3, 10], "{pr:#?}");
        assert!(pr[0].message.contains("unknown field `bogus`"), "{pr:?}");
        assert!(pr[1].message.contains("nonsense"), "{pr:?}");
        assert!(pr[2].message.contains("99999"), "{pr:?}");
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
    fn without_protect_the_users_ports_are_protected() {
        let s = p(ALICE).unwrap();
        assert_eq!(s.protect, None);
        assert_eq!(
            s.protected_ports(),
            vec![PortSpec::tcp(22), PortSpec::udp(51820)]
        );
        let w = s.protection_warnings();
        assert!(
            w[0].contains("open to everyone after the next restart"),
            "{w:?}"
        );
        let w = p("").unwrap().protection_warnings();
        assert!(w[0].contains("protects no port"), "{w:?}");
    }

    /// Regression (issue 13.7): taking tcp/22 from the last user that had it must not open it
    /// to the internet. With `protect = ["tcp/22"]` it stays protected.
    #[test]
    fn a_port_no_user_has_stays_protected_when_listed() {
        let text = format!(
            "[server]\nprotect = [\"tcp/22\", \"udp/51820\", \"tcp/443\"]\n{}",
            ALICE.replace("\"tcp/22\", ", "")
        );
        let s = p(&text).unwrap();
        assert_eq!(s.users[0].ports, vec![PortSpec::udp(51820)]);
        assert_eq!(
            s.protected_ports(),
            vec![PortSpec::tcp(22), PortSpec::tcp(443), PortSpec::udp(51820)]
        );
        let w = s.protection_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no user may open tcp/22, tcp/443"), "{w:?}");
        // No users at all: still protected.
        let s = p("[server]\nprotect = [\"22\"]\n").unwrap();
        assert_eq!(s.protected_ports(), vec![PortSpec::tcp(22)]);
    }

    #[test]
    fn protect_is_checked() {
        // A user port outside protect is a problem, on the user's line.
        let text = format!("[server]\nprotect = [\"tcp/22\"]\n{ALICE}");
        let pr = problems(&text);
        assert_eq!(pr.len(), 1, "{pr:?}");
        assert_eq!(pr[0].line, Some(9));
        assert!(
            pr[0]
                .message
                .contains("udp/51820 is not in [server] protect"),
            "{pr:?}"
        );
        let pr =
            problems("[server]\nprotect = [\"tcp/22\", \"tcp/22\", \"tcp/x\", \"udp/62201\"]\n");
        assert_eq!(pr.len(), 3, "{pr:?}");
        assert!(pr[0].message.contains("twice"), "{pr:?}");
        assert!(pr[2].message.contains("knock port"), "{pr:?}");
        assert!(problems("[server]\nprotect = \"tcp/22\"\n")[0].line == Some(2));
        assert_eq!(
            p("[server]\nprotect = []\n").unwrap().protected_ports(),
            vec![]
        );
    }

    #[test]
    fn group_names_follow_the_platform() {
        for ok in ["capyknock", "adm", "web-ops_2", "a.b"] {
            assert!(valid_group_name(ok, false), "{ok}");
            assert!(valid_group_name(ok, true), "{ok}");
        }
        for unix_only_bad in ["Remote Admins", r"CORP\Ops", &"x".repeat(33)] {
            assert!(!valid_group_name(unix_only_bad, false), "{unix_only_bad}");
            assert!(valid_group_name(unix_only_bad, true), "{unix_only_bad}");
        }
        // Windows refuses names of only dots and spaces.
        assert!(!valid_group_name("..", true));
        assert!(!valid_group_name(" . ", true));
        for bad in [
            "",
            "a:b",
            "a\nb",
            r"\Ops",
            r"CORP\",
            r"A\B\C",
            "a,b",
            &"x".repeat(257),
        ] {
            assert!(!valid_group_name(bad, false), "{bad:?}");
            assert!(!valid_group_name(bad, true), "{bad:?}");
        }
    }
}
