//! The server configuration file (TOML): raw serde structs as written by the admin, validated
//! into [`Settings`] that the daemon uses.
//!
//! Two layers, as in ripgrep's `lowargs`/`hiargs`: [`schema`] holds [`RawConfig`], which mirrors
//! the file exactly (every field optional where a default exists, unknown keys refused), and
//! [`Settings`], which holds only checked, typed values; [`validate`] turns the one into the
//! other, reporting every problem with the file, the line and what to do, all at once so one
//! `check-config` run shows everything to fix; [`edit`] appends users (`capyknock keygen`).
//! What the client config shares (problem list, reading a private file) is in [`crate::conf`].
//! docs/CONFIG.md documents every key; contrib/server.example.toml is the reference file and is
//! checked by the tests below.

pub mod edit;
pub mod schema;
pub mod validate;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use edit::{AddUserError, EXAMPLE, add_user, render_default, render_user};
pub use schema::{
    ConfigDuration, Limits, LogLimits, RawConfig, RawInterfaces, RawLimits, RawLog, RawServer,
    RawUser, Settings,
};

use crate::{
    conf::{self, Problem},
    private_file::PrivateFileError,
};

/// Where the daemon looks for its configuration when `--config` is not given.
#[cfg(not(windows))]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/capyknock/server.toml";
/// Default state directory (systemd `StateDirectory=capyknock`).
#[cfg(not(windows))]
pub const DEFAULT_STATE_DIR: &str = "/var/lib/capyknock";
/// Default control socket (systemd `RuntimeDirectory=capyknock`).
#[cfg(not(windows))]
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/capyknock/control.sock";
/// The control pipe on Windows.
#[cfg(windows)]
pub const DEFAULT_CONTROL_SOCKET: &str = r"\\.\pipe\capyknock";

/// Where the daemon looks for its configuration when `--config` is not given: on Windows
/// `capyknock\server.toml` in the `ProgramData` folder ([`super::win_host::data_dir`];
/// `C:\ProgramData\capyknock\server.toml` on a standard install).
#[must_use]
pub fn default_config_path() -> PathBuf {
    #[cfg(not(windows))]
    {
        PathBuf::from(DEFAULT_CONFIG_PATH)
    }
    #[cfg(windows)]
    {
        super::win_host::data_dir().join("server.toml")
    }
}

/// The default state directory: on Windows `capyknock\state` in the `ProgramData` folder.
#[must_use]
pub fn default_state_dir() -> PathBuf {
    #[cfg(not(windows))]
    {
        PathBuf::from(DEFAULT_STATE_DIR)
    }
    #[cfg(windows)]
    {
        super::win_host::data_dir().join("state")
    }
}

/// Default access duration for users that do not set their own.
pub const DEFAULT_ACCESS: Duration = Duration::from_mins(5);

/// Most knock ports one server watches (the XDP map's size).
pub const MAX_KNOCK_PORTS: usize = capyknock_common::maps::KNOCK_PORTS_MAX as usize;
/// Most users one configuration may hold.
pub const MAX_USERS: usize = capyknock_common::maps::USERS_MAX as usize;
/// Most ports one user may be allowed.
pub const MAX_USER_PORTS: usize = 64;
/// Most ports `protect` may list (the firewall has one rule per protected port).
pub const MAX_PROTECTED_PORTS: usize = 1024;
/// Most interfaces one server captures on.
pub const MAX_INTERFACES: usize = 64;
/// Shortest and longest access durations.
pub const ACCESS_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_hours(7 * 24));
/// Shortest and longest freshness windows.
pub const FRESHNESS_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_mins(10));
/// Largest config file read (a config with [`MAX_USERS`] users fits easily).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The server config as messages name it.
pub const KIND: conf::Kind = conf::Kind {
    what: "config",
    docs: "docs/CONFIG.md",
    max_bytes: MAX_CONFIG_BYTES,
};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "config {} does not exist: check the path; `capyknock keygen` writes a first one with a \
         user (docs/CONFIG.md)",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Unreadable, too large, or not private (mode, owner, directory).
    #[error(transparent)]
    File(#[from] PrivateFileError),
    /// Windows: the file's access list lets others read or change it.
    #[cfg(windows)]
    #[error("{0}")]
    Acl(String),
    /// Syntax or content problems, each with its line.
    #[error("{}", conf::render_problems(&KIND, path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// Reads, checks permissions, parses and validates `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = read_checked(path)?;
    parse(path, &text)
}

/// Reads `path` after checking it is a private regular file of sane size: owned by us (or
/// root), accessible by its owner alone, in a directory others cannot write to.
pub fn read_checked(path: &Path) -> Result<String, ConfigError> {
    let text = conf::read(&KIND, path)?.ok_or_else(|| ConfigError::Missing {
        path: path.to_owned(),
    })?;
    // Windows has no mode bits: its DACL must not open the file to Everyone or Users.
    #[cfg(windows)]
    super::win_acl::check_private(path, "config").map_err(ConfigError::Acl)?;
    Ok(text)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let conf::Parsed {
        value,
        mut problems,
    } = conf::parse_all::<RawConfig>(&KIND, text);
    let Some(raw) = value else {
        return Err(invalid(problems));
    };
    match validate::validate(path, text, raw) {
        Ok(settings) if problems.is_empty() => Ok(settings),
        Ok(_) => Err(invalid(problems)),
        Err(more) => {
            problems.extend(more);
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(invalid(problems))
        }
    }
}

/// Reads only the control socket path from a config, without the permission check or full
/// validation: used by the `status`/`ban` clients, which may not be allowed to read the whole
/// file. Falls back to the default when the file cannot be read.
#[must_use]
pub fn control_socket_of(path: &Path) -> PathBuf {
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        server: PartialServer,
    }
    #[derive(Default, serde::Deserialize)]
    struct PartialServer {
        control_socket: Option<String>,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<Partial>(&t).ok())
        .and_then(|p| p.server.control_socket)
        .map_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::CaptureMode,
        firewall::FirewallConfig,
        protocol::keys::{TotpSecret, UserKey},
    };

    fn p(text: &str) -> Result<Settings, ConfigError> {
        parse(Path::new("/etc/capyknock/server.toml"), text)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = p("").unwrap();
        assert_eq!(
            s.knock_ports,
            vec![capyknock_common::wire::DEFAULT_KNOCK_PORT]
        );
        assert_eq!(s.capture, CaptureMode::Auto);
        assert_eq!(s.xdp_mode, None);
        assert_eq!(s.state_dir, default_state_dir());
        assert_eq!(s.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(s.freshness, crate::protocol::verify::DEFAULT_FRESHNESS);
        assert_eq!(s.default_access, DEFAULT_ACCESS);
        assert!(!s.revoke_removed_users);
        assert_eq!(s.protect, None);
        assert!(s.users.is_empty());
    }

    /// The reference config with this platform's default paths (the example's own are Linux
    /// paths, which are not absolute on Windows).
    fn example() -> String {
        super::render_default(capyknock_common::wire::DEFAULT_KNOCK_PORT)
    }

    #[test]
    fn example_is_valid_and_states_the_defaults() {
        let s = p(&example()).unwrap();
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
        assert_eq!(s.protect, d.protect);
        assert_eq!(s.limits, d.limits);
        assert_eq!(s.log, d.log);
        assert_eq!(s.firewall, FirewallConfig::default());
        assert!(s.users.is_empty());
    }

    #[test]
    fn example_commented_keys_are_valid_when_uncommented() {
        let example = example();
        // The commented `protect` line of [server].
        let line = example
            .lines()
            .find(|l| l.starts_with("# protect = "))
            .unwrap();
        let text = example.replacen(line, line.trim_start_matches("# "), 1);
        let s = p(&text).unwrap();
        assert_eq!(
            s.protect,
            Some(vec![crate::ports::PortSpec::tcp(22)]),
            "{line}"
        );
    }

    #[test]
    fn example_commented_user_is_valid_when_uncommented() {
        let example = example();
        let start = example.find("# [[user]]").unwrap();
        let mut user = String::new();
        for l in example[start..].lines().filter(|l| !l.starts_with("# #")) {
            user.push_str(l.trim_start_matches("# "));
            user.push('\n');
        }
        let s = p(&format!("{}\n{user}", &example[..start])).unwrap();
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
    fn syntax_errors_name_the_line() {
        let err = p("[server]\nstate_dir = \"/x\n").unwrap_err().to_string();
        assert!(err.contains("/etc/capyknock/server.toml:2:"), "{err}");
        assert!(err.starts_with("config /etc/capyknock/server.toml has 1 problem:"));
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_files_others_can_read_or_replace() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
        assert!(
            err.to_string().contains("does not exist: check the path"),
            "{err}"
        );
        crate::private_file::write_atomic(&path, b"").unwrap();
        assert!(load(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod go-w {}", dir.path().display())),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_loopback_or_unix_only() {
        let example = example();
        assert_eq!(p("").unwrap().metrics_listen, None);
        let line = example
            .lines()
            .find(|l| l.starts_with("# metrics_listen = "))
            .unwrap();
        let text = example.replacen(line, line.trim_start_matches("# "), 1);
        assert_eq!(
            p(&text).unwrap().metrics_listen,
            Some(crate::server::metrics::Listen::Tcp(
                "127.0.0.1:9184".parse().unwrap()
            ))
        );
        // A Unix socket path is not absolute on Windows (where there is no metrics endpoint).
        #[cfg(unix)]
        {
            let s = p("[server]\nmetrics_listen = \"unix:/run/capyknock/metrics.sock\"\n").unwrap();
            assert_eq!(
                s.metrics_listen,
                Some(crate::server::metrics::Listen::Unix(
                    "/run/capyknock/metrics.sock".into()
                ))
            );
        }
        let err = p("[server]\nknock_ports = [62201]\nmetrics_listen = \"0.0.0.0:9184\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/capyknock/server.toml:3:")
                && err.contains("0.0.0.0:9184 is not a loopback address"),
            "{err}"
        );
        let err = p("[server]\nmetrics_listen = \"9184\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an address"), "{err}");
    }

    #[test]
    fn realtime_priority_is_off_by_default_and_1_to_99() {
        let example = example();
        assert_eq!(p("").unwrap().realtime_priority, None);
        let line = example
            .lines()
            .find(|l| l.starts_with("# realtime_priority = "))
            .unwrap();
        let text = example.replacen(line, line.trim_start_matches("# "), 1);
        assert_eq!(
            p(&text)
                .unwrap()
                .realtime_priority
                .map(crate::server::realtime::RealtimePriority::get),
            Some(10)
        );
        for ok in [1, 99] {
            let s = p(&format!("[server]\nrealtime_priority = {ok}\n")).unwrap();
            assert_eq!(
                s.realtime_priority
                    .map(crate::server::realtime::RealtimePriority::get),
                Some(ok)
            );
        }
        for bad in ["0", "100", "-5", "1000000000000"] {
            let err = p(&format!(
                "[server]\nknock_ports = [1]\nrealtime_priority = {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("/etc/capyknock/server.toml:3:")
                    && err.contains(&format!("realtime_priority = {bad} is out of range"))
                    && err.contains("from 1 to 99"),
                "{bad}: {err}"
            );
        }
        let err = p("[server]\nrealtime_priority = \"high\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.toml:2:"), "{err}");
        // A misspelling is an unknown key, as for every other key.
        let err = p("[server]\nrealtime_prio = 10\n").unwrap_err().to_string();
        assert!(
            err.contains("realtime_prio") && err.contains("spelling"),
            "{err}"
        );
    }

    #[test]
    fn control_socket_of_reads_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\ncontrol_socket = \"/tmp/x.sock\"\n[[user]]\n",
        )
        .unwrap();
        assert_eq!(control_socket_of(&path), Path::new("/tmp/x.sock"));
        assert_eq!(
            control_socket_of(&dir.path().join("missing.toml")),
            Path::new(DEFAULT_CONTROL_SOCKET)
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,400}") {
            let _ = p(&text);
        }
    }
}
