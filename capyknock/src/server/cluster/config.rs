//! The `[cluster]` section of the server config: [`RawCluster`] exactly as written, checked into
//! [`ClusterSettings`] by [`validate`] with a line and a fix for every problem. Without the
//! section the daemon is a single server and needs no etcd (docs/FLEET.md, docs/CONFIG.md).

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use crate::{conf::Checker, server::config::ConfigDuration};

/// The key prefix when `prefix` is not set.
pub const DEFAULT_PREFIX: &str = "/capyknock/";
/// How long a claim may take before the store counts as unreachable, when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Shortest and longest `timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(10));
/// Most endpoints and most groups.
pub const MAX_ENDPOINTS: usize = 16;
/// Most groups one node belongs to.
pub const MAX_GROUPS: usize = 32;
/// Longest node, group and user name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest key prefix.
pub const MAX_PREFIX_LEN: usize = 128;

/// `[cluster]` as written. Every key is described in docs/CONFIG.md.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs, `http://HOST:PORT` or `https://HOST:PORT`. Required.
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    /// This node's name in the fleet (claims and logs name it). Required.
    pub node: Option<Spanned<String>>,
    /// Groups this node belongs to. Default: none.
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    /// Prefix of every key capyknock writes. Default `/capyknock/`.
    pub prefix: Option<Spanned<String>>,
    /// CA certificate (PEM) that signed the etcd servers' certificates; required with https.
    pub ca: Option<Spanned<String>>,
    /// Client certificate (PEM), with `key`. Default: none.
    pub cert: Option<Spanned<String>>,
    /// Client certificate's private key (PEM), with `cert`. Default: none.
    pub key: Option<Spanned<String>>,
    /// etcd user name, with `password`. Default: none (no etcd authentication).
    pub user: Option<Spanned<String>>,
    /// etcd password, with `user`.
    pub password: Option<Spanned<String>>,
    /// `refuse` or `local`. Default `refuse`.
    pub on_store_failure: Option<Spanned<String>>,
    /// Longest wait for one claim. Default `500ms`.
    pub timeout: Option<Spanned<ConfigDuration>>,
    /// Also take users from the store (`PREFIX users/`, `keygen --cluster`). Default `false`.
    pub users_from_store: Option<Spanned<bool>>,
    /// The key that seals the store's user records; required with `users_from_store`.
    pub seal_key: Option<Spanned<String>>,
}

/// What a node does with a verified knock when etcd cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreFailure {
    /// Refuse it (and log it): no knock opens anything without a fleet-wide claim.
    #[default]
    Refuse,
    /// Accept it on local one-time state alone (logged loudly); its claim is written to etcd
    /// when the store returns.
    Local,
}

impl OnStoreFailure {
    /// The config word.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Local => "local",
        }
    }
}

/// TLS towards etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate and key (PEM), when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// etcd user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    /// The user.
    pub user: String,
    /// The password (never printed).
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The checked `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// This node's name.
    pub node: String,
    /// Groups, sorted, no duplicates.
    pub groups: Vec<String>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
    /// TLS, when the endpoints are `https://`.
    pub tls: Option<Tls>,
    /// etcd authentication.
    pub auth: Option<Auth>,
    /// What to do when the store is unreachable.
    pub on_store_failure: OnStoreFailure,
    /// Longest wait for one claim.
    pub timeout: Duration,
    /// Users from the store (`users_from_store = true`): the seal key's file; `None`: only the
    /// config's users.
    pub seal_key: Option<PathBuf>,
}

/// Checks `[cluster]` (at `span` in the file); `None` when a problem was recorded in `c`.
#[expect(
    clippy::too_many_lines,
    reason = "one linear pass over the keys, in file order, each with its default beside it"
)]
pub fn validate(
    c: &mut Checker<'_>,
    raw: RawCluster,
    span: &std::ops::Range<usize>,
) -> Option<ClusterSettings> {
    const DOCS: &str = "docs/FLEET.md";
    let before = c.count();

    let endpoints = match raw.endpoints {
        None => {
            c.at(
                span,
                format!(
                    "[cluster] needs endpoints, e.g. endpoints = [\"https://10.0.0.1:2379\"] \
                     ({DOCS}); remove the section for a single server"
                ),
            );
            Vec::new()
        }
        Some(list) => {
            let list_span = list.span();
            let list = list.into_inner();
            if list.is_empty() || list.len() > MAX_ENDPOINTS {
                c.at(
                    &list_span,
                    format!("endpoints must list 1 to {MAX_ENDPOINTS} etcd client URLs"),
                );
            }
            let mut out = Vec::new();
            for e in list {
                match check_endpoint(e.get_ref()) {
                    Ok(()) if out.contains(e.get_ref()) => {
                        c.at(
                            &e.span(),
                            format!("endpoint {} is listed twice: remove one", e.get_ref()),
                        );
                    }
                    Ok(()) => out.push(e.get_ref().clone()),
                    Err(msg) => c.at(&e.span(), msg),
                }
            }
            out
        }
    };
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != endpoints.len() {
        c.at(
            span,
            "endpoints mix http:// and https://: use https:// for all of them",
        );
    }

    let node = match raw.node {
        None => {
            c.at(
                span,
                "[cluster] needs node = \"NAME\", this server's name in the fleet (e.g. its host \
                 name)",
            );
            String::new()
        }
        Some(n) => {
            if let Err(msg) = check_name(n.get_ref()) {
                c.at(&n.span(), format!("node: {msg}"));
            }
            n.into_inner()
        }
    };

    let mut groups = Vec::new();
    if let Some(list) = raw.groups {
        if list.get_ref().len() > MAX_GROUPS {
            c.at(
                &list.span(),
                format!("groups lists more than {MAX_GROUPS} groups"),
            );
        }
        for g in list.into_inner() {
            if let Err(msg) = check_name(g.get_ref()) {
                c.at(&g.span(), format!("group: {msg}"));
            } else if groups.contains(g.get_ref()) {
                c.at(
                    &g.span(),
                    format!("group {:?} is listed twice: remove one", g.get_ref()),
                );
            } else {
                groups.push(g.into_inner());
            }
        }
        groups.sort();
    }

    let prefix = match raw.prefix {
        None => DEFAULT_PREFIX.to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if !text.starts_with('/')
                || text.len() > MAX_PREFIX_LEN
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'))
            {
                c.at(
                    &p.span(),
                    format!(
                        "prefix must start with / and hold only letters, digits and / _ - . (at \
                         most {MAX_PREFIX_LEN} characters), e.g. \"{DEFAULT_PREFIX}\""
                    ),
                );
            }
            let mut text = p.into_inner();
            if !text.ends_with('/') {
                text.push('/');
            }
            text
        }
    };

    let path = |c: &mut Checker<'_>, v: Option<Spanned<String>>, key: &str| {
        v.map(|v| {
            let p = PathBuf::from(v.get_ref());
            if !p.is_absolute() {
                c.at(
                    &v.span(),
                    format!("{key} must be an absolute path to a PEM file"),
                );
            }
            (p, v.span())
        })
    };
    let ca = path(c, raw.ca, "ca");
    let cert = path(c, raw.cert, "cert");
    let key = path(c, raw.key, "key");
    let identity = match (cert, key) {
        (Some((cert, _)), Some((key, _))) => Some((cert, key)),
        (Some((_, s)), None) | (None, Some((_, s))) => {
            c.at(
                &s,
                "cert and key go together: set both (a client certificate and its key) or neither",
            );
            None
        }
        (None, None) => None,
    };
    let tls = if let Some((ca, s)) = ca {
        if https == 0 && !endpoints.is_empty() {
            c.at(
                &s,
                "ca is set but the endpoints are http://: write them as https://",
            );
        }
        Some(Tls { ca, identity })
    } else {
        if https != 0 {
            c.at(
                span,
                "https:// endpoints need ca = \"/path/to/etcd-ca.pem\", the CA that signed \
                     the etcd servers' certificates",
            );
        } else if identity.is_some() {
            c.at(
                span,
                "cert and key need https:// endpoints and ca = \"/path/to/etcd-ca.pem\"",
            );
        }
        None
    };

    let auth = match (raw.user, raw.password) {
        (Some(user), Some(password)) => {
            if let Err(msg) = check_name(user.get_ref()) {
                c.at(&user.span(), format!("user: {msg}"));
            }
            if password.get_ref().is_empty() {
                c.at(&password.span(), "password is empty");
            }
            Some(Auth {
                user: user.into_inner(),
                password: Zeroizing::new(password.into_inner()),
            })
        }
        (Some(v), None) => {
            c.at(&v.span(), "user needs password (etcd authentication)");
            None
        }
        (None, Some(v)) => {
            c.at(&v.span(), "password needs user (etcd authentication)");
            None
        }
        (None, None) => None,
    };

    let on_store_failure = match raw.on_store_failure {
        None => OnStoreFailure::Refuse,
        Some(v) => match v.get_ref().as_str() {
            "refuse" => OnStoreFailure::Refuse,
            "local" => OnStoreFailure::Local,
            other => {
                c.at(
                    &v.span(),
                    format!(
                        "unknown on_store_failure {other:?}: use \"refuse\" (default: no knock \
                         opens without a fleet-wide claim) or \"local\" (fall back to this \
                         node's one-time state)"
                    ),
                );
                OnStoreFailure::Refuse
            }
        },
    };

    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(v) => {
            let d = v.get_ref().0;
            let (min, max) = TIMEOUT_RANGE;
            if d < min || d > max {
                c.at(
                    &v.span(),
                    format!(
                        "timeout must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
            }
            d
        }
    };

    let seal_key = match (raw.users_from_store, raw.seal_key) {
        (Some(on), seal) if *on.get_ref() => match seal {
            None => {
                c.at(
                    &on.span(),
                    "users_from_store = true needs seal_key = \"/etc/capyknock/cluster-seal.key\", \
                     the file with the key that seals the users' secrets in etcd (the first \
                     `capyknock keygen --cluster` creates it; copy it to every node)",
                );
                None
            }
            Some(p) => {
                let path = PathBuf::from(p.get_ref());
                if !path.is_absolute() {
                    c.at(
                        &p.span(),
                        "seal_key must be an absolute path, e.g. \
                         \"/etc/capyknock/cluster-seal.key\"",
                    );
                }
                Some(path)
            }
        },
        (_, Some(p)) => {
            c.at(
                &p.span(),
                "seal_key is only used with users_from_store = true: add that line, or remove \
                 seal_key",
            );
            None
        }
        (_, None) => None,
    };

    (c.count() == before).then_some(ClusterSettings {
        endpoints,
        node,
        groups,
        prefix,
        tls,
        auth,
        on_store_failure,
        timeout,
        seal_key,
    })
}

/// A user's `scope`: `None` for `"node"`, the group's name for `"group:NAME"`, which must be
/// one of this node's `[cluster] groups` (a problem is recorded otherwise).
pub fn user_scope(
    c: &mut Checker<'_>,
    scope: &Spanned<String>,
    cluster: Option<&ClusterSettings>,
) -> Option<String> {
    let text = scope.get_ref();
    if text == "node" {
        return None;
    }
    let Some(group) = text.strip_prefix("group:") else {
        c.at(
            &scope.span(),
            format!(
                "unknown scope {text:?}: use \"node\" (open on the node knocked) or \
                 \"group:NAME\" (open on every node of group NAME)"
            ),
        );
        return None;
    };
    match cluster {
        None => c.at(
            &scope.span(),
            "scope = \"group:...\" needs a [cluster] section (docs/FLEET.md)",
        ),
        Some(cl) if !cl.groups.iter().any(|g| g == group) => c.at(
            &scope.span(),
            format!(
                "scope {text:?}: this node is not in group {group:?}; add it to [cluster] groups"
            ),
        ),
        Some(_) => return Some(group.to_owned()),
    }
    None
}

/// A node, group or user name: 1 to [`MAX_NAME_LEN`] letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{name:?} is not a valid name: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// An etcd client URL: `http://` or `https://`, a host, a port, nothing after.
fn check_endpoint(url: &str) -> Result<(), String> {
    let fix = "write etcd client URLs as http://HOST:PORT or https://HOST:PORT (e.g. \
               https://10.0.0.1:2379)";
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!("endpoint {url:?}: {fix}"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port = rest
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port)))
            if port != 0
                && !host.is_empty()
                && !host.contains('/')
                && !host.contains('@')
                && host.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(())
        }
        _ => Err(format!("endpoint {url:?}: {fix}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::config::parse;
    use std::path::Path;

    fn p(text: &str) -> Result<crate::server::config::Settings, String> {
        parse(Path::new("/etc/capyknock/server.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn no_section_no_cluster() {
        assert_eq!(p("").unwrap().cluster, None);
    }

    #[test]
    fn minimal_section_takes_the_defaults() {
        let s = p("[cluster]\nendpoints = [\"http://10.0.0.1:2379\"]\nnode = \"bastion-1\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(s.endpoints, vec!["http://10.0.0.1:2379"]);
        assert_eq!(s.node, "bastion-1");
        assert!(s.groups.is_empty());
        assert_eq!(s.prefix, DEFAULT_PREFIX);
        assert_eq!(s.tls, None);
        assert_eq!(s.auth, None);
        assert_eq!(s.on_store_failure, OnStoreFailure::Refuse);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.seal_key, None);
    }

    // Unix paths, not absolute on Windows; fleet mode runs on Linux only (docs/WINDOWS.md).
    #[cfg(unix)]
    #[test]
    fn users_from_store_needs_a_seal_key() {
        let head = "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\n";
        let s = p(&format!(
            "{head}users_from_store = true\nseal_key = \"/etc/capyknock/cluster-seal.key\"\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            s.seal_key.as_deref(),
            Some(std::path::Path::new("/etc/capyknock/cluster-seal.key"))
        );
        let s = p(&format!("{head}users_from_store = false\n"))
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(s.seal_key, None);
        for (text, line, want) in [
            ("users_from_store = true\n", 4, "needs seal_key = "),
            (
                "users_from_store = true\nseal_key = \"seal.key\"\n",
                5,
                "seal_key must be an absolute path",
            ),
            (
                "seal_key = \"/etc/capyknock/cluster-seal.key\"\n",
                4,
                "only used with users_from_store = true",
            ),
            (
                "users_from_store = false\nseal_key = \"/k\"\n",
                5,
                "only used with users_from_store = true",
            ),
            ("users_from_store = \"store\"\n", 4, "invalid type"),
        ] {
            let err = p(&format!("{head}{text}")).unwrap_err();
            assert!(
                err.contains(&format!("/etc/capyknock/server.toml:{line}:")) && err.contains(want),
                "{text:?}: want line {line} and {want:?} in\n{err}"
            );
        }
    }

    // Unix paths, not absolute on Windows; fleet mode runs on Linux only (docs/WINDOWS.md).
    #[cfg(unix)]
    #[test]
    fn full_section() {
        let s = p("[cluster]\n\
             endpoints = [\"https://etcd1:2379\", \"https://etcd2:2379\"]\n\
             node = \"b2\"\ngroups = [\"pool\", \"ha\"]\nprefix = \"/ck\"\n\
             ca = \"/etc/capyknock/ca.pem\"\ncert = \"/etc/capyknock/c.pem\"\n\
             key = \"/etc/capyknock/k.pem\"\nuser = \"capyknock\"\npassword = \"s3cret\"\n\
             on_store_failure = \"local\"\ntimeout = \"200ms\"\n")
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(s.groups, vec!["ha", "pool"]);
        assert_eq!(s.prefix, "/ck/");
        assert_eq!(
            s.tls.unwrap().identity,
            Some(("/etc/capyknock/c.pem".into(), "/etc/capyknock/k.pem".into()))
        );
        let auth = s.auth.unwrap();
        assert_eq!(auth.user, "capyknock");
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert_eq!(s.on_store_failure, OnStoreFailure::Local);
        assert_eq!(s.timeout, Duration::from_millis(200));
    }

    #[test]
    fn problems_name_the_line_and_the_fix() {
        for (text, line, want) in [
            ("[cluster]\nnode = \"a\"\n", 1, "needs endpoints"),
            (
                "[cluster]\nendpoints = [\"10.0.0.1:2379\"]\nnode = \"a\"\n",
                2,
                "http://HOST:PORT",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\n",
                1,
                "needs node = \"NAME\"",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a b\"\n",
                3,
                "not a valid name",
            ),
            (
                "[cluster]\nendpoints = [\"https://e:2379\"]\nnode = \"a\"\n",
                1,
                "need ca =",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\nca = \"/x.pem\"\n",
                4,
                "write them as https://",
            ),
            (
                "[cluster]\nendpoints = [\"https://e:2379\"]\nnode = \"a\"\nca = \"/x.pem\"\n\
                 cert = \"/c.pem\"\n",
                5,
                "cert and key go together",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\nuser = \"u\"\n",
                4,
                "user needs password",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\n\
                 on_store_failure = \"open\"\n",
                4,
                "use \"refuse\"",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\ntimeout = \"1m\"\n",
                4,
                "timeout must be between",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\ngroups = [\"x\", \"x\"]\n",
                4,
                "listed twice",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\nprefix = \"ck\"\n",
                4,
                "prefix must start with /",
            ),
            (
                "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\nendpoint = \"x\"\n",
                4,
                "unknown field",
            ),
        ] {
            let err = p(text).unwrap_err();
            assert!(
                err.contains(&format!("/etc/capyknock/server.toml:{line}:")) && err.contains(want),
                "{text:?}: want line {line} and {want:?} in\n{err}"
            );
        }
    }

    #[test]
    fn user_scopes() {
        let head = "[cluster]\nendpoints = [\"http://e:2379\"]\nnode = \"a\"\ngroups = [\"pool\"]\n\
                    [[user]]\nid = \"000102030405060708090a0b0c0d0e0f\"\nnickname = \"alice\"\n\
                    key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
                    totp_secret = \"AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT\"\nports = [\"tcp/22\"]\n";
        let s = p(&format!("{head}scope = \"group:pool\"\n")).unwrap();
        assert_eq!(s.user_scopes.values().collect::<Vec<_>>(), vec!["pool"]);
        assert!(
            p(&format!("{head}scope = \"node\"\n"))
                .unwrap()
                .user_scopes
                .is_empty()
        );
        let err = p(&format!("{head}scope = \"group:other\"\n")).unwrap_err();
        assert!(
            err.contains(":11:") && err.contains("not in group \"other\""),
            "{err}"
        );
        let err = p(&format!("{head}scope = \"everywhere\"\n")).unwrap_err();
        assert!(err.contains("unknown scope"), "{err}");
        let err = p(&format!(
            "{}scope = \"group:pool\"\n",
            &head[head.find("[[user]]").unwrap()..]
        ))
        .unwrap_err();
        assert!(err.contains("needs a [cluster] section"), "{err}");
    }

    // Unix paths, not absolute on Windows; fleet mode runs on Linux only (docs/WINDOWS.md).
    #[cfg(unix)]
    #[test]
    fn example_cluster_section_is_valid_when_uncommented() {
        let example = crate::server::config::EXAMPLE;
        let start = example.find("# [cluster]").unwrap();
        let mut section = String::new();
        for l in example[start..].lines().take_while(|l| l.starts_with("# ")) {
            section.push_str(l.trim_start_matches("# "));
            section.push('\n');
        }
        let s = p(&format!("{}\n{section}", &example[..start])).unwrap();
        let c = s.cluster.unwrap();
        assert_eq!((c.node.as_str(), c.endpoints.len()), ("bastion-1", 3));
    }

    #[test]
    fn endpoints() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.example.org:2379/",
            "http://[fd00::1]:2379",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:2379",
            "http://:2379",
            "http://e",
            "http://e:0",
            "http://e:99999",
            "http://u@e:2379",
            "unix:///run/etcd.sock",
            "http://e:2379/v3",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
