//! The client configuration: one `[profile.NAME]` table per server a user knocks on, written by
//! `capyknock keygen` and read by `capyknock knock`.
//!
//! Two layers as in the server config: [`RawProfile`] mirrors the file (serde, unknown keys
//! refused, spans kept for messages) and [`Profile`] holds checked, typed values with the keys
//! decoded. Reading the private file and reporting problems with their lines is shared with the
//! server config ([`crate::conf`]). New profiles are added with `toml_edit`, so the user's
//! comments and other profiles stay exactly as they were, and the file is replaced atomically
//! with mode 0600 ([`crate::private_file`]).
//!
//! ```toml
//! [profile.work]
//! server = "work.example.com"
//! knock_port = 62201
//! ports = ["tcp/22"]
//! nickname = "alice"
//! user_id = "00112233445566778899aabbccddeeff"
//! key = "<base64 of 32 bytes>"
//! totp_mode = "prompt"
//! ```

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    conf::{self, Checker, Problem, check_nickname},
    ports::{PortSpec, Protocol},
    private_file::{self, DirRule, PrivateFileError},
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        payload::MAX_PORTS,
        users::TotpMode,
    },
};

/// File name of the client config inside the user's config directory.
pub const CONFIG_FILE_NAME: &str = "client.toml";
/// Largest client config read.
pub const MAX_CLIENT_CONFIG_BYTES: u64 = 1024 * 1024;
/// Longest profile name.
pub const MAX_PROFILE_NAME_LEN: usize = 64;

/// The client config as messages name it.
pub const KIND: conf::Kind = conf::Kind {
    what: "client config",
    docs: "docs/CLIENT.md",
    max_bytes: MAX_CLIENT_CONFIG_BYTES,
};

/// Header written at the top of a new client config.
pub const NEW_FILE_HEADER: &str = "\
# capyknock client configuration: one [profile.NAME] table per server you knock on.
#
# `capyknock keygen` adds profiles here; `capyknock knock NAME` (or `capyknock knock HOST`, which
# finds the profile whose `server` is HOST) uses them. The file holds your secret knock key:
# keep it private (mode 0600; capyknock refuses a file that others can read).
# docs/CLIENT.md describes every key:
#   server      host name or address of the server (IPv4 or IPv6)
#   knock_port  UDP port the server watches for knocks
#   ports       what to ask the server to open, \"tcp/22\" or \"udp/51820\"
#   check_port  TCP port checked before and after knocking (default: the first tcp port)
#   nickname    your name on that server (shown in prompts)
#   user_id     your random user id
#   key         your secret knock key
#   totp_mode   \"prompt\" (type the code from your authenticator app) or \"derived\" (computed
#               from totp_secret: for backup jobs and scripts)
#   totp_secret only with totp_mode = \"derived\"
#   allow_ip    ask the server to open for this address instead of your packet's source address
#               (for clients behind NAT; the server must allow it)

# Profile used by `capyknock knock` without a name (optional; with a single profile, that one).
# default_profile = \"work\"
";

/// Why a client config could not be read, used or written.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// No config directory on this system and no `--client-config`.
    #[error("cannot find your configuration directory: pass --client-config PATH")]
    NoConfigDir,
    /// The file does not exist.
    #[error(
        "client config {} does not exist: create a profile with `capyknock keygen` (on the \
         server) and copy it there, or pass --client-config PATH",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Unreadable, too large, or not private (mode, owner, directory).
    #[error(transparent)]
    File(#[from] PrivateFileError),
    /// Not valid.
    #[error("{}", conf::render_problems(&KIND, path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Everything wrong, with lines.
        problems: Vec<Problem>,
    },
    /// The profile to add exists already.
    #[error(
        "profile {name:?} already exists in {}: choose another name with --profile NAME",
        path.display()
    )]
    ProfileExists {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write client config {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClientConfig {
    /// Profile used when `knock` gets no name.
    pub default_profile: Option<Spanned<String>>,
    /// Profiles by name.
    pub profile: BTreeMap<String, Spanned<RawProfile>>,
}

/// One `[profile.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Host name or address.
    pub server: Spanned<String>,
    /// UDP knock port. Default 62201.
    pub knock_port: Option<Spanned<u16>>,
    /// Ports to ask for. Default: none (all of the user's ports).
    pub ports: Option<Spanned<Vec<Spanned<String>>>>,
    /// TCP port to check. Default: the first TCP port of `ports`.
    pub check_port: Option<Spanned<u16>>,
    /// The user's nickname on the server, for prompts.
    pub nickname: Option<Spanned<String>>,
    /// 32 hex digits.
    pub user_id: Spanned<String>,
    /// Base64 of 32 bytes.
    pub key: Spanned<String>,
    /// `prompt` (default) or `derived`.
    pub totp_mode: Option<Spanned<String>>,
    /// Base32 TOTP secret, only for `derived`.
    pub totp_secret: Option<Spanned<String>>,
    /// Address to ask the server to open for.
    pub allow_ip: Option<Spanned<String>>,
}

/// Where the TOTP code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    /// Asked from the user (authenticator app).
    Prompt,
    /// Computed from the stored secret (machine-to-machine).
    Derived(TotpSecret),
}

impl CodeSource {
    /// The matching server-side mode.
    #[must_use]
    pub const fn mode(&self) -> TotpMode {
        match self {
            CodeSource::Prompt => TotpMode::Prompt,
            CodeSource::Derived(_) => TotpMode::Derived,
        }
    }
}

/// A checked profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// Host name or address of the server.
    pub server: String,
    /// UDP knock port.
    pub knock_port: u16,
    /// Ports to ask for (at most [`MAX_PORTS`]; empty asks for all of the user's ports).
    pub ports: Vec<PortSpec>,
    /// TCP port checked before and after knocking, if any.
    pub check_port: Option<u16>,
    /// Nickname for prompts, if known.
    pub nickname: Option<String>,
    /// The user id.
    pub user_id: UserId,
    /// The knock key.
    pub key: UserKey,
    /// Where codes come from.
    pub code: CodeSource,
    /// Address to ask the server to open for, instead of the packet's source.
    pub allow_ip: Option<IpAddr>,
}

impl Profile {
    /// `nickname@server`, or the profile name when there is no nickname: for prompts.
    #[must_use]
    pub fn label(&self) -> String {
        match &self.nickname {
            Some(nick) => format!("{nick}@{}", self.server),
            None => self.name.clone(),
        }
    }
}

/// A checked client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// `default_profile`, checked to exist.
    pub default_profile: Option<String>,
    /// Profiles in name order.
    pub profiles: Vec<Profile>,
}

/// Why no profile could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// No profile has this name or server.
    #[error(
        "no profile named {wanted:?} and none whose server is {wanted:?} in {path}; known: {known}"
    )]
    NotFound {
        /// What was asked for.
        wanted: String,
        /// The config file.
        path: String,
        /// Profile names and servers, for the message.
        known: String,
    },
    /// Several profiles have this server and none this name.
    #[error("several profiles use server {wanted:?} ({names}): name one of them")]
    Ambiguous {
        /// What was asked for.
        wanted: String,
        /// The candidates.
        names: String,
    },
    /// No name given and no default.
    #[error(
        "{path} has {count} profiles and no default_profile: name one ({known}), or set \
         default_profile"
    )]
    NoDefault {
        /// The config file.
        path: String,
        /// How many profiles.
        count: usize,
        /// Their names.
        known: String,
    },
    /// The file has no profiles.
    #[error("{path} has no profiles: add one with `capyknock keygen`")]
    Empty {
        /// The config file.
        path: String,
    },
}

impl ClientConfig {
    /// Picks a profile: by name; else the one whose `server` equals `wanted` (ASCII case
    /// ignored, so ssh's `%h` works); with no `wanted`, `default_profile` or the only profile.
    pub fn select(&self, wanted: Option<&str>) -> Result<&Profile, SelectError> {
        let path = self.path.display().to_string();
        if self.profiles.is_empty() {
            return Err(SelectError::Empty { path });
        }
        let known = || {
            self.profiles
                .iter()
                .map(|p| format!("{} ({})", p.name, p.server))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(wanted) = wanted.or(self.default_profile.as_deref()) else {
            return match self.profiles.as_slice() {
                [only] => Ok(only),
                _ => Err(SelectError::NoDefault {
                    path,
                    count: self.profiles.len(),
                    known: self
                        .profiles
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            };
        };
        if let Some(p) = self.profiles.iter().find(|p| p.name == wanted) {
            return Ok(p);
        }
        let host = wanted.trim_start_matches('[').trim_end_matches(']');
        let matches: Vec<&Profile> = self
            .profiles
            .iter()
            .filter(|p| same_host(&p.server, host))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(SelectError::NotFound {
                wanted: wanted.to_owned(),
                path,
                known: known(),
            }),
            many => Err(SelectError::Ambiguous {
                wanted: wanted.to_owned(),
                names: many
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Whether two host strings name the same host: equal ignoring ASCII case, or the same IP
/// address however written.
fn same_host(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim_start_matches('[').trim_end_matches(']').to_owned();
    let (a, b) = (strip(a), strip(b));
    if a.eq_ignore_ascii_case(&b) {
        return true;
    }
    matches!((a.parse::<IpAddr>(), b.parse::<IpAddr>()), (Ok(x), Ok(y)) if x == y)
}

/// The default client config path: `$XDG_CONFIG_HOME/capyknock/client.toml` (usually
/// `~/.config/capyknock/client.toml`) on Linux, `%APPDATA%\capyknock\client.toml` on Windows,
/// `~/Library/Application Support/capyknock/client.toml` on macOS.
pub fn default_path() -> Result<PathBuf, ClientConfigError> {
    dirs::config_dir()
        .map(|d| d.join("capyknock").join(CONFIG_FILE_NAME))
        .ok_or(ClientConfigError::NoConfigDir)
}

/// `explicit`, else [`default_path`].
pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf, ClientConfigError> {
    explicit.map_or_else(default_path, |p| Ok(p.to_owned()))
}

/// Reads, checks permissions, parses and validates the client config at `path`.
pub fn load(path: &Path) -> Result<ClientConfig, ClientConfigError> {
    let text = read_checked(path)?.ok_or_else(|| ClientConfigError::Missing {
        path: path.to_owned(),
    })?;
    parse(path, &text)
}

/// Reads `path` after checking it is a private regular file of sane size, owned by us (or
/// root), in a directory others cannot write to; `None` if it does not exist.
pub fn read_checked(path: &Path) -> Result<Option<String>, ClientConfigError> {
    Ok(conf::read(&KIND, path)?)
}

/// Parses and validates client config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<ClientConfig, ClientConfigError> {
    let invalid = |problems| ClientConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let conf::Parsed {
        value,
        problems: mut shape_problems,
    } = conf::parse_all::<RawClientConfig>(&KIND, text);
    let Some(raw) = value else {
        return Err(invalid(shape_problems));
    };
    let mut problems = Vec::new();
    let mut profiles = Vec::new();
    for (name, raw) in raw.profile {
        let line = conf::line_of(text, &raw.span());
        match validate_profile(text, &name, raw.into_inner()) {
            Ok(p) => profiles.push(p),
            Err(mut ps) => {
                for p in &mut ps {
                    p.line = p.line.or(Some(line));
                }
                problems.extend(ps);
            }
        }
    }
    let default_profile = raw.default_profile.map(|d| {
        let line = conf::line_of(text, &d.span());
        let name = d.into_inner();
        if !problems.is_empty() || profiles.iter().any(|p| p.name == name) {
            return name;
        }
        problems.push(Problem {
            line: Some(line),
            message: format!("default_profile {name:?} names no [profile.{name}] in this file"),
        });
        name
    });
    if problems.is_empty() && shape_problems.is_empty() {
        Ok(ClientConfig {
            path: path.to_owned(),
            default_profile,
            profiles,
        })
    } else {
        shape_problems.extend(problems);
        shape_problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(invalid(shape_problems))
    }
}

/// Checks a profile name: 1-64 characters of `A-Z a-z 0-9 . _ @ : -`.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PROFILE_NAME_LEN {
        return Err(format!(
            "profile name must be 1 to {MAX_PROFILE_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b':' | b'-'))
    {
        return Err(format!(
            "profile name {name:?} may only use letters, digits, '.', '_', '@', ':' and '-'"
        ));
    }
    Ok(())
}

/// Checks a server host: a non-empty host name or address with no spaces or control
/// characters.
pub fn check_server(server: &str) -> Result<(), String> {
    let bare = server.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() || bare.len() > 253 {
        return Err("server must be a host name or an IP address".into());
    }
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if !bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "server {server:?} is neither an IP address nor a host name (letters, digits, '.', \
             '-', '_')"
        ));
    }
    Ok(())
}

fn port(c: &mut Checker<'_>, value: Option<Spanned<u16>>, key: &str) -> Option<u16> {
    let p = value?;
    if *p.get_ref() == 0 {
        c.at(&p.span(), format_args!("{key} must be 1-65535"));
        return None;
    }
    Some(p.into_inner())
}

fn ports(c: &mut Checker<'_>, raw: Option<Spanned<Vec<Spanned<String>>>>) -> Vec<PortSpec> {
    let span = raw.as_ref().map_or(0..0, Spanned::span);
    let mut ports: Vec<PortSpec> = Vec::new();
    for p in raw.map(Spanned::into_inner).unwrap_or_default() {
        match p.get_ref().parse::<PortSpec>() {
            Ok(spec) if !ports.contains(&spec) => ports.push(spec),
            Ok(_) => {}
            Err(e) => c.at(&p.span(), e),
        }
    }
    if ports.len() > MAX_PORTS {
        c.at(
            &span,
            format_args!(
                "a knock can ask for at most {MAX_PORTS} ports; list fewer (or none: all)"
            ),
        );
    }
    ports
}

fn code(
    c: &mut Checker<'_>,
    mode: Option<&Spanned<String>>,
    secret: Option<&Spanned<String>>,
) -> Option<CodeSource> {
    let parsed = mode.map_or(Ok(TotpMode::Prompt), |m| m.get_ref().parse::<TotpMode>());
    match (parsed, mode) {
        (Ok(TotpMode::Prompt), _) => {
            if let Some(s) = secret {
                c.at(
                    &s.span(),
                    "totp_secret is only used with totp_mode = \"derived\"; remove it (a \
                     prompted profile must not store the second factor)",
                );
            }
            Some(CodeSource::Prompt)
        }
        (Ok(TotpMode::Derived), _) => {
            let Some(s) = secret else {
                let span = mode.map_or(0..0, Spanned::span);
                c.at(&span, "totp_mode = \"derived\" needs totp_secret");
                return None;
            };
            TotpSecret::from_base32(s.get_ref())
                .map_err(|e| c.at(&s.span(), e))
                .ok()
                .map(CodeSource::Derived)
        }
        (Err(_), m) => {
            let (text, span) = m.map_or(("", 0..0), |m| (m.get_ref().as_str(), m.span()));
            c.at(
                &span,
                format_args!("totp_mode {text:?} is not \"prompt\" or \"derived\""),
            );
            None
        }
    }
}

fn validate_profile(text: &str, name: &str, raw: RawProfile) -> Result<Profile, Vec<Problem>> {
    let mut c = Checker::with_context(text, format!("[profile.{name}]"));
    if let Err(m) = check_profile_name(name) {
        // No line of its own: the caller puts the profile's line.
        c.at_line(None, m);
    }
    let server_span = raw.server.span();
    let server = raw.server.into_inner();
    if let Err(m) = check_server(&server) {
        c.at(&server_span, m);
    }
    let knock_port = port(&mut c, raw.knock_port, "knock_port")
        .unwrap_or(capyknock_common::wire::DEFAULT_KNOCK_PORT);
    let ports = ports(&mut c, raw.ports);
    let check_port = match raw.check_port {
        Some(p) => port(&mut c, Some(p), "check_port"),
        None => ports
            .iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port),
    };
    let nickname = raw.nickname.map(|n| {
        if let Err(m) = check_nickname(n.get_ref()) {
            c.at(&n.span(), m);
        }
        n.into_inner()
    });
    let user_id = raw
        .user_id
        .get_ref()
        .parse::<UserId>()
        .map_err(|e| c.at(&raw.user_id.span(), e))
        .ok();
    let key = UserKey::from_base64(raw.key.get_ref())
        .map_err(|e| c.at(&raw.key.span(), e))
        .ok();
    let code = code(&mut c, raw.totp_mode.as_ref(), raw.totp_secret.as_ref());
    let allow_ip = raw.allow_ip.and_then(|a| {
        a.get_ref()
            .parse::<IpAddr>()
            .map_err(|_| {
                c.at(
                    &a.span(),
                    format_args!("allow_ip {:?} is not an IP address", a.get_ref()),
                );
            })
            .ok()
    });
    match (user_id, key, code) {
        (Some(user_id), Some(key), Some(code)) if c.is_clean() => Ok(Profile {
            name: name.to_owned(),
            server,
            knock_port,
            ports,
            check_port,
            nickname,
            user_id,
            key,
            code,
            allow_ip,
        }),
        _ => Err(c.into_problems()),
    }
}

/// A profile to add, as `keygen` creates it.
#[derive(Debug, Clone)]
pub struct NewProfile {
    /// The profile's name.
    pub name: String,
    /// What the profile holds.
    pub profile: Profile,
    /// First line of the comment above the table.
    pub comment: String,
}

/// Adds `new` to the client config at `path` (creating it with an explanatory header when
/// missing). Other profiles and comments are kept as written; an existing profile of the same
/// name is never replaced. The result is validated before it is written atomically with mode
/// 0600.
pub fn add_profile(path: &Path, new: &NewProfile) -> Result<ClientConfig, ClientConfigError> {
    let existing = read_checked(path)?;
    let text = existing.unwrap_or_else(|| NEW_FILE_HEADER.to_owned());
    // Validate what is there first: never build on top of a broken file.
    parse(path, &text)?;
    let updated = append_profile(path, &text, new)?;
    let config = parse(path, &updated)?;
    private_file::ensure_dir(private_file::dir_of(path), KIND.what, DirRule::NoReplace)?;
    private_file::write_atomic(path, updated.as_bytes()).map_err(|source| {
        ClientConfigError::Write {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(config)
}

/// `text` with `new` appended as `[profile.NAME]`. `toml_edit` checks the existing document
/// (the `profile` table and the free name) and renders the new table with correct quoting; the
/// new text goes after everything already there, so the rest of the file stays byte for byte.
fn append_profile(path: &Path, text: &str, new: &NewProfile) -> Result<String, ClientConfigError> {
    use toml_edit::{Array, DocumentMut, Item, Table, value};
    let invalid = |message: String| ClientConfigError::Invalid {
        path: path.to_owned(),
        problems: vec![Problem {
            line: None,
            message,
        }],
    };
    let existing: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
    match existing.get("profile") {
        None => {}
        Some(Item::Table(t)) if !t.contains_key(&new.name) => {}
        Some(Item::Table(_)) => {
            return Err(ClientConfigError::ProfileExists {
                name: new.name.clone(),
                path: path.to_owned(),
            });
        }
        Some(_) => {
            return Err(invalid(
                "`profile` must be written as [profile.NAME] tables".into(),
            ));
        }
    }
    let p = &new.profile;
    let mut t = Table::new();
    t.decor_mut()
        .set_prefix(format!("\n# {}\n", new.comment.replace(['\n', '\r'], " ")));
    t.insert("server", value(p.server.as_str()));
    t.insert("knock_port", value(i64::from(p.knock_port)));
    let mut ports = Array::new();
    for spec in &p.ports {
        ports.push(spec.to_string());
    }
    t.insert("ports", value(ports));
    if let Some(check) = p.check_port {
        let first_tcp = p
            .ports
            .iter()
            .find(|s| s.protocol == Protocol::Tcp)
            .map(|s| s.port);
        if first_tcp != Some(check) {
            t.insert("check_port", value(i64::from(check)));
        }
    }
    if let Some(nick) = &p.nickname {
        t.insert("nickname", value(nick.as_str()));
    }
    t.insert("user_id", value(p.user_id.to_string()));
    t.insert("key", value(p.key.to_base64_secret()));
    t.insert("totp_mode", value(p.code.mode().as_str()));
    if let CodeSource::Derived(secret) = &p.code {
        t.insert("totp_secret", value(secret.to_base32_secret()));
    }
    if let Some(ip) = p.allow_ip {
        t.insert("allow_ip", value(ip.to_string()));
    }
    let mut parent = Table::new();
    parent.set_implicit(true);
    parent.insert(&new.name, Item::Table(t));
    let mut addition = DocumentMut::new();
    addition.insert("profile", Item::Table(parent));
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&addition.to_string());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const SECRET: &str = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT";

    fn p(text: &str) -> Result<ClientConfig, ClientConfigError> {
        parse(Path::new("/home/u/.config/capyknock/client.toml"), text)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match p(text) {
            Err(ClientConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn profile_text(name: &str, server: &str) -> String {
        format!(
            "[profile.{name}]\nserver = \"{server}\"\nports = [\"tcp/22\", \"udp/51820\"]\n\
             user_id = \"00112233445566778899aabbccddeeff\"\nkey = \"{KEY}\"\n"
        )
    }

    fn sample(name: &str, server: &str, code: CodeSource) -> NewProfile {
        NewProfile {
            name: name.into(),
            comment: format!("{name}, added by a test"),
            profile: Profile {
                name: name.into(),
                server: server.into(),
                knock_port: 4000,
                ports: vec![PortSpec::tcp(2222), PortSpec::udp(53)],
                check_port: Some(2222),
                nickname: Some("alice".into()),
                user_id: UserId([7; 16]),
                key: UserKey::from_bytes([9; 32]),
                code,
                allow_ip: None,
            },
        }
    }

    #[test]
    fn minimal_profile_takes_defaults() {
        let c = p(&profile_text("work", "work.example.com")).unwrap();
        let [w] = c.profiles.as_slice() else { panic!() };
        assert_eq!(w.knock_port, 62201);
        assert_eq!(w.check_port, Some(22));
        assert_eq!(w.code, CodeSource::Prompt);
        assert_eq!(w.ports, vec![PortSpec::tcp(22), PortSpec::udp(51820)]);
        assert_eq!(w.label(), "work");
        assert_eq!(w.key, UserKey::from_base64(KEY).unwrap());
    }

    #[test]
    fn the_new_file_header_is_a_valid_empty_config() {
        let c = p(NEW_FILE_HEADER).unwrap();
        assert!(c.profiles.is_empty());
        assert!(matches!(c.select(None), Err(SelectError::Empty { .. })));
    }

    #[test]
    fn problems_name_line_and_profile() {
        let text = format!(
            "{}totp_mode = \"derived\"\nknock_port = 0\nallow_ip = \"nope\"\n\n[profile.b]\nserver = \
             \"x\"\nuser_id = \"zz\"\nkey = \"short\"\n",
            profile_text("a", "a.example")
        );
        let ps = problems(&text);
        let msgs: Vec<String> = ps
            .iter()
            .map(|p| format!("{:?} {}", p.line, p.message))
            .collect();
        let all = msgs.join("\n");
        assert!(
            all.contains("Some(6) [profile.a] totp_mode = \"derived\" needs totp_secret"),
            "{all}"
        );
        assert!(
            all.contains("Some(7) [profile.a] knock_port must be"),
            "{all}"
        );
        assert!(
            all.contains("Some(8) [profile.a] allow_ip \"nope\""),
            "{all}"
        );
        assert!(
            all.contains("Some(12) [profile.b] invalid user id"),
            "{all}"
        );
        assert!(
            all.contains("Some(13) [profile.b] invalid user key"),
            "{all}"
        );
    }

    #[test]
    fn prompted_profile_must_not_store_the_secret() {
        let text = format!("{}totp_secret = \"{SECRET}\"\n", profile_text("a", "h"));
        let ps = problems(&text);
        assert!(ps[0].message.contains("only used with totp_mode"), "{ps:?}");
    }

    #[test]
    fn derived_profile() {
        let text = format!(
            "{}totp_mode = \"derived\"\ntotp_secret = \"{SECRET}\"\n",
            profile_text("ci", "h")
        );
        let c = p(&text).unwrap();
        assert_eq!(
            c.profiles[0].code,
            CodeSource::Derived(TotpSecret::from_base32(SECRET).unwrap())
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused_with_lines() {
        let ps = problems("default_profile = \"x\"\nbogus = 1\n");
        assert!(
            ps.iter()
                .any(|p| p.line == Some(2) && p.message.contains("unknown field")),
            "{ps:?}"
        );
        let ps = problems(&format!("{}serverr = \"x\"\n", profile_text("a", "h")));
        assert!(ps[0].message.contains("unknown field"), "{ps:?}");
        let ps = problems("[profile.a\n");
        assert_eq!(ps[0].line, Some(1));
        let ps = problems(&format!(
            "default_profile = \"nope\"\n{}",
            profile_text("a", "h")
        ));
        assert!(ps[0].message.contains("names no [profile.nope]"), "{ps:?}");
    }

    #[test]
    fn too_many_ports_refused() {
        let ports: Vec<String> = (1..=17).map(|p| format!("\"tcp/{p}\"")).collect();
        let text = format!(
            "[profile.a]\nserver = \"h\"\nports = [{}]\nuser_id = \"00112233445566778899aabbccddeeff\"\nkey = \"{KEY}\"\n",
            ports.join(",")
        );
        assert!(problems(&text)[0].message.contains("at most 16"));
    }

    #[test]
    fn select_by_name_host_default_and_only() {
        let text = format!(
            "{}\n{}\n{}",
            profile_text("work", "Work.Example.com"),
            profile_text("home", "2001:db8::1"),
            profile_text("lab", "lab.example")
        );
        let mut c = p(&text).unwrap();
        assert_eq!(c.select(Some("home")).unwrap().name, "home");
        assert_eq!(c.select(Some("work.example.COM")).unwrap().name, "work");
        assert_eq!(c.select(Some("2001:db8:0::1")).unwrap().name, "home");
        assert_eq!(c.select(Some("[2001:db8::1]")).unwrap().name, "home");
        let err = c.select(Some("other.example")).unwrap_err();
        assert!(err.to_string().contains("work (Work.Example.com)"), "{err}");
        assert!(matches!(
            c.select(None),
            Err(SelectError::NoDefault { count: 3, .. })
        ));
        c.default_profile = Some("lab".into());
        assert_eq!(c.select(None).unwrap().name, "lab");
        c.profiles.retain(|p| p.name == "work");
        c.default_profile = None;
        assert_eq!(c.select(None).unwrap().name, "work");
        let twice = format!(
            "{}\n{}",
            profile_text("a", "same.example"),
            profile_text("b", "same.example")
        );
        let c = p(&twice).unwrap();
        assert!(matches!(
            c.select(Some("same.example")),
            Err(SelectError::Ambiguous { .. })
        ));
        assert_eq!(c.select(Some("b")).unwrap().name, "b");
    }

    #[test]
    fn add_profile_creates_then_appends_keeping_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capyknock/client.toml");
        let first = sample("work", "work.example.com", CodeSource::Prompt);
        let c = add_profile(&path, &first).unwrap();
        assert_eq!(c.profiles.len(), 1);
        assert_eq!(c.profiles[0], first.profile);
        // A comment the user adds survives the next keygen.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("# my own note\n");
        crate::private_file::write_private(&path, text.as_bytes()).unwrap();
        let second = sample(
            "ci",
            "2001:db8::5",
            CodeSource::Derived(TotpSecret::from_bytes([3; 20])),
        );
        let c = add_profile(&path, &second).unwrap();
        assert_eq!(c.profiles.len(), 2);
        assert_eq!(c.select(Some("ci")).unwrap(), &second.profile);
        assert_eq!(c.select(Some("work")).unwrap(), &first.profile);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(&text), "existing text changed:\n{after}");
        assert!(
            after.contains("# ci, added by a test\n[profile.ci]"),
            "{after}"
        );
        // Same name again: refused, file untouched.
        let err = add_profile(&path, &second).unwrap_err();
        assert!(
            matches!(err, ClientConfigError::ProfileExists { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
        assert_eq!(load(&path).unwrap().profiles.len(), 2);
    }

    #[test]
    fn add_profile_with_special_name_and_allow_ip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut new = sample("alice@2001:db8::1", "2001:db8::1", CodeSource::Prompt);
        new.profile.allow_ip = Some("203.0.113.9".parse().unwrap());
        new.profile.check_port = Some(8443);
        let c = add_profile(&path, &new).unwrap();
        assert_eq!(c.profiles[0], new.profile);
    }

    #[test]
    fn add_profile_refuses_a_broken_file_and_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        crate::private_file::write_private(&path, b"profile = 3\n").unwrap();
        let err = add_profile(&path, &sample("a", "h", CodeSource::Prompt)).unwrap_err();
        assert!(matches!(err, ClientConfigError::Invalid { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"profile = 3\n");
    }

    #[cfg(unix)]
    #[test]
    fn readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, profile_text("a", "h")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let err = load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(err, ClientConfigError::Missing { .. }), "{err}");
    }

    #[test]
    fn names_and_servers_checked() {
        assert!(check_profile_name("work-1.example_x@y:z").is_ok());
        assert!(check_profile_name("").is_err());
        assert!(check_profile_name("a b").is_err());
        assert!(check_profile_name(&"a".repeat(65)).is_err());
        assert!(check_server("host.example").is_ok());
        assert!(check_server("[2001:db8::1]").is_ok());
        assert!(check_server("10.0.0.1").is_ok());
        assert!(check_server("a b").is_err());
        assert!(check_server("").is_err());
        assert!(check_server("x\ny").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = p(&s);
        }
    }
}
