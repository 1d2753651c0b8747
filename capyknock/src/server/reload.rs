//! What a configuration reload changes: which settings take effect at once (users, freshness,
//! access durations, log limits, `protect`), which need a restart (knock ports, interfaces,
//! capture, paths, limits, firewall settings), which users were removed, which ports need
//! protecting and which are no longer asked to be. Pure functions over two [`Settings`]; the
//! daemon applies the result.

use std::collections::{BTreeSet, HashSet};

use super::config::Settings;
use crate::{ports::PortSpec, protocol::keys::UserId};

/// The outcome of comparing the settings in force with a newly loaded file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The settings to use from now on: the new file's reloadable settings on top of the
    /// restart-only settings in force.
    pub settings: Settings,
    /// Restart-only settings that differ, as `key` names; they keep their old values.
    pub needs_restart: Vec<&'static str>,
    /// Users in the old file and not in the new one.
    pub removed: Vec<UserId>,
    /// Users in the new file and not in the old one.
    pub added: usize,
    /// Ports the new file protects ([`Settings::protected_ports`]) that the firewall does not
    /// protect yet: the daemon has the firewall protect them too (their union with the ports
    /// protected so far).
    pub unprotected: Vec<PortSpec>,
    /// Ports the firewall protects that the new file does not: they stay protected until the
    /// next restart and then open to everyone.
    pub no_longer_protected: Vec<PortSpec>,
    /// What to tell the admin about [`Self::no_longer_protected`] (the daemon logs it and
    /// returns it to `capyknock reload`).
    pub protection_warning: Option<String>,
}

/// Compares `old` (in force, protecting `protected`) with `new` (just loaded and validated).
#[must_use]
pub fn plan(old: &Settings, new: Settings, protected: &[PortSpec]) -> Plan {
    let mut needs_restart = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            needs_restart.push(key);
        }
    };
    check(old.knock_ports != new.knock_ports, "knock_ports");
    check(old.interfaces != new.interfaces, "interfaces");
    check(old.capture != new.capture, "capture");
    check(old.xdp_mode != new.xdp_mode, "xdp_mode");
    check(old.state_dir != new.state_dir, "state_dir");
    check(old.control_socket != new.control_socket, "control_socket");
    check(old.control_group != new.control_group, "control_group");
    check(old.metrics_listen != new.metrics_listen, "metrics_listen");
    check(
        old.realtime_priority != new.realtime_priority,
        "realtime_priority",
    );
    check(old.limits != new.limits, "[limits]");
    check(old.firewall != new.firewall, "[firewall]");
    check(old.privsep != new.privsep, "privsep");
    check(old.cluster != new.cluster, "[cluster]");

    let new_ids: HashSet<UserId> = new.users.iter().map(|u| u.id).collect();
    let old_ids: HashSet<UserId> = old.users.iter().map(|u| u.id).collect();
    let removed = old
        .users
        .iter()
        .map(|u| u.id)
        .filter(|id| !new_ids.contains(id))
        .collect();
    let added = new
        .users
        .iter()
        .filter(|u| !old_ids.contains(&u.id))
        .count();
    let protected: BTreeSet<PortSpec> = protected.iter().copied().collect();
    let wanted: BTreeSet<PortSpec> = new.protected_ports().into_iter().collect();
    let unprotected = wanted.difference(&protected).copied().collect();
    let no_longer_protected: Vec<PortSpec> = protected.difference(&wanted).copied().collect();

    let protection_warning =
        no_longer_protected_warning(&no_longer_protected, new.protect.is_some());
    let settings = Settings {
        freshness: new.freshness,
        default_access: new.default_access,
        revoke_removed_users: new.revoke_removed_users,
        privsep: new.privsep,
        protect: new.protect,
        log: new.log,
        users: new.users,
        user_scopes: new.user_scopes,
        ..old.clone()
    };
    Plan {
        settings,
        needs_restart,
        removed,
        added,
        unprotected,
        no_longer_protected,
        protection_warning,
    }
}

/// The warning for ports no longer protected by a file with (or without) `protect`.
fn no_longer_protected_warning(ports: &[PortSpec], has_protect: bool) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    Some(format!(
        "protected until the next restart, then open to everyone: {} ({})",
        ports.join(", "),
        if has_protect {
            "[server] protect no longer lists them"
        } else {
            "no user has them any more; list them in [server] protect to keep them closed"
        }
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::server::config::parse;

    const USER: &str = r#"
[[user]]
id = "ID"
nickname = "NICK"
key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
totp_secret = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT"
ports = ["PORT"]
"#;

    fn user(id: char, nick: &str, port: &str) -> String {
        USER.replace("ID", &id.to_string().repeat(32))
            .replace("NICK", nick)
            .replace("PORT", port)
    }

    fn settings(text: &str) -> Settings {
        parse(Path::new("/x.toml"), text).unwrap()
    }

    #[test]
    fn users_and_timing_apply_the_rest_waits_for_a_restart() {
        let old = settings(&format!(
            "[server]\nfreshness = 60\n{}{}",
            user('a', "alice", "tcp/22"),
            user('b', "bob", "tcp/22")
        ));
        let new = settings(&format!(
            "[server]\nfreshness = 120\nknock_ports = [4000]\nstate_dir = '{}'\n\
             [log]\nrejections_per_second = 1\n{}{}",
            // Absolute on this platform (a Unix path is relative on Windows).
            std::env::temp_dir().join("ck").display(),
            user('a', "alice", "tcp/22"),
            user('c', "carol", "tcp/3389")
        ));
        let p = plan(&old, new, &old.protected_ports());
        assert_eq!(p.needs_restart, vec!["knock_ports", "state_dir"]);
        assert_eq!(p.settings.knock_ports, old.knock_ports);
        assert_eq!(p.settings.state_dir, old.state_dir);
        assert_eq!(p.settings.freshness.as_secs(), 120);
        assert_eq!(p.settings.log.per_second, 1);
        assert_eq!(p.settings.users.len(), 2);
        assert_eq!(p.removed, vec![old.users[1].id]);
        assert_eq!(p.added, 1);
        assert_eq!(p.unprotected, vec![PortSpec::tcp(3389)]);
        assert!(p.no_longer_protected.is_empty());
    }

    /// Issue 13.7: the last user loses tcp/22. Without `protect` the daemon is told it opens at
    /// the next restart; with `protect = ["tcp/22"]` it stays protected.
    #[test]
    fn a_port_taken_from_its_last_user() {
        let old = settings(&user('a', "alice", "tcp/22"));
        let new = settings(&user('a', "alice", "tcp/2222"));
        let p = plan(&old, new, &old.protected_ports());
        assert_eq!(p.unprotected, vec![PortSpec::tcp(2222)]);
        assert_eq!(p.no_longer_protected, vec![PortSpec::tcp(22)]);
        let w = p.protection_warning.unwrap();
        assert!(
            w.starts_with("protected until the next restart, then open to everyone: tcp/22 ("),
            "{w}"
        );
        assert!(w.contains("[server] protect"), "{w}");

        let new = settings(&format!(
            "[server]\nprotect = [\"tcp/22\", \"tcp/2222\"]\n{}",
            user('a', "alice", "tcp/2222")
        ));
        assert_eq!(
            new.protected_ports(),
            vec![PortSpec::tcp(22), PortSpec::tcp(2222)]
        );
        let p = plan(&old, new, &old.protected_ports());
        assert_eq!(p.unprotected, vec![PortSpec::tcp(2222)]);
        assert!(p.no_longer_protected.is_empty());
        assert_eq!(p.protection_warning, None);
        assert!(p.settings.protect.is_some());
    }

    #[test]
    fn realtime_priority_waits_for_a_restart() {
        let old = settings("[server]\nrealtime_priority = 10\n");
        let p = plan(&old, settings(""), &old.protected_ports());
        assert_eq!(p.needs_restart, vec!["realtime_priority"]);
        assert_eq!(p.settings.realtime_priority, old.realtime_priority);
    }

    #[test]
    fn identical_files_change_nothing() {
        let text = user('a', "alice", "tcp/22");
        let old = settings(&text);
        let p = plan(&old, settings(&text), &old.protected_ports());
        assert!(p.needs_restart.is_empty());
        assert!(p.removed.is_empty());
        assert_eq!(p.added, 0);
        assert!(p.unprotected.is_empty());
        assert!(p.no_longer_protected.is_empty());
    }
}
