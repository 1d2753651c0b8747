//! Network interfaces for the xdp and pcap modes: checking names, finding indexes, and choosing
//! the default set (every interface that is up, except loopback) when none is configured.
//!
//! Everything here asks the kernel through the calling thread's network namespace (`getifaddrs`,
//! `if_nametoindex`; netlink on Linux), never `/sys`, which shows the namespace it was mounted
//! in. Portable to every Unix the pcap mode runs on (Linux, macOS, FreeBSD).

/// Which interfaces the config asks for: the `interfaces` list, where empty means every
/// interface (except loopback) and a name ending in `*` is a prefix pattern (`"veth*"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfaceSelector {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl IfaceSelector {
    /// The selector for the config's (or `--iface`'s) list.
    #[must_use]
    pub fn new(configured: &[String]) -> Self {
        let mut s = Self::default();
        for entry in configured {
            match entry.strip_suffix('*') {
                Some(prefix) => s.prefixes.push(prefix.to_owned()),
                None => s.names.push(entry.clone()),
            }
        }
        s
    }

    /// True when no interface is named: every interface that is up, except loopback.
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty()
    }

    /// The exact names: each must exist at start.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether capture should use interface `name`. Loopback is used only when named exactly.
    #[must_use]
    pub fn matches(&self, name: &str, loopback: bool) -> bool {
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        if loopback {
            return false;
        }
        self.is_all() || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// Why an interface cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Not a possible interface name.
    #[error("invalid interface name {0:?} (1-15 characters, no '/', no NUL)")]
    BadName(String),
    /// No interface of that name in this network namespace.
    #[error("interface {0:?} does not exist (`ip link` lists the interfaces)")]
    Missing(String),
    /// No interface to default to.
    #[error("no network interface is up (besides loopback); name one with --iface")]
    NoneUp,
    /// Listing interfaces failed.
    #[error("cannot list network interfaces")]
    List(#[source] std::io::Error),
}

/// Checks that `name` could be an interface name (`IFNAMSIZ` - 1 bytes, no `/` or NUL).
pub fn check_name(name: &str) -> Result<(), IfaceError> {
    if name.is_empty() || name.len() > 15 || name.contains(['\0', '/']) || name.contains(' ') {
        return Err(IfaceError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The index of interface `name`.
pub fn index(name: &str) -> Result<u32, IfaceError> {
    check_name(name)?;
    nix::net::if_::if_nametoindex(name).map_err(|_| IfaceError::Missing(name.to_owned()))
}

/// The interfaces `configured` selects now (see [`IfaceSelector`]): each exact name (which must
/// exist), then every interface that is up, not loopback and matches a `prefix*` pattern; with
/// nothing configured, every interface that is up except loopback, sorted by name.
pub fn resolve(configured: &[String]) -> Result<Vec<(String, u32)>, IfaceError> {
    let selector = IfaceSelector::new(configured);
    let mut out = Vec::new();
    for name in selector.names() {
        out.push((name.clone(), index(name)?));
    }
    if selector.names().len() < configured.len() || selector.is_all() {
        for name in up_non_loopback()? {
            if selector.matches(&name, false)
                && !out.iter().any(|(n, _)| *n == name)
                && let Ok(i) = index(&name)
            {
                out.push((name, i));
            }
        }
    }
    if out.is_empty() && selector.is_all() {
        return Err(IfaceError::NoneUp);
    }
    Ok(out)
}

/// Checks that every interface `configured` names exactly (not the `prefix*` patterns) exists:
/// a named interface that does not exist is an error, whatever the capture mode.
pub fn check_named(configured: &[String]) -> Result<(), IfaceError> {
    for name in IfaceSelector::new(configured).names() {
        index(name)?;
    }
    Ok(())
}

/// Names of the interfaces that are up and not loopback.
fn up_non_loopback() -> Result<Vec<String>, IfaceError> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::List(e.into()))?;
    let mut names: Vec<String> = addrs
        .filter(|ifa| {
            ifa.flags.contains(InterfaceFlags::IFF_UP)
                && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .map(|ifa| ifa.interface_name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "x\0", "sixteen-chars-xx", "with space"] {
            assert!(
                matches!(check_name(bad), Err(IfaceError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(check_name("eth0").is_ok());
    }

    #[test]
    fn loopback_exists_and_missing_is_reported() {
        assert!(index("lo").unwrap() > 0);
        let err = index("ck-no-such0").unwrap_err();
        assert!(matches!(err, IfaceError::Missing(_)));
        assert!(err.to_string().contains("ck-no-such0"));
        assert!(resolve(&["ck-no-such0".to_owned()]).is_err());
        assert!(check_named(&["ck-no-such0".to_owned()]).is_err());
        assert!(check_named(&["lo".to_owned(), "ck-no-such*".to_owned()]).is_ok());
        // A pattern that matches nothing yet is not an error: interfaces may come later.
        assert!(resolve(&["ck-no-such*".to_owned()]).unwrap().is_empty());
        assert_eq!(
            resolve(&["lo".to_owned()]).unwrap(),
            [("lo".to_owned(), index("lo").unwrap())]
        );
    }

    #[test]
    fn default_set_never_has_loopback() {
        if let Ok(list) = resolve(&[]) {
            assert!(list.iter().all(|(n, _)| n != "lo"));
        }
    }
}
