//! The server-side subcommands: `server`, `check-config`, `ban`, `unban`, `status [--json]`,
//! `reload`. Their arguments (clap) and entry points, so `main.rs` stays a thin dispatcher.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::{
    config::{self, ConfigError},
    control::{self, ClientError, MAX_BAN, Request},
    status,
};
use crate::{
    capture::CaptureMode,
    firewall::{ErrorChain, FirewallKind},
};

/// `capyknock server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Configuration file.
    #[arg(long, short, value_name = "PATH", default_value_os_t = config::default_config_path())]
    pub config: PathBuf,
    /// Interface to capture on; repeat for several. Replaces the config's `interfaces`.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Capture mode. Replaces the config's `capture`.
    #[arg(long, value_name = "MODE", value_enum)]
    pub capture: Option<CaptureMode>,
    /// Firewall backend: auto, nftables, windows, exec or none. Replaces `[firewall] backend`.
    #[arg(long, value_name = "BACKEND")]
    pub firewall: Option<FirewallKind>,
}

/// `capyknock check-config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// Configuration file to check.
    #[arg(value_name = "PATH", default_value_os_t = config::default_config_path())]
    pub path: PathBuf,
}

/// Where the control socket is: `--socket`, else the config's `control_socket`.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Server configuration to read `control_socket` from.
    #[arg(long, short, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> PathBuf {
        control::socket_path(self.socket.as_deref(), self.config.as_deref())
    }
}

/// `capyknock ban`.
#[derive(Debug, Clone, clap::Args)]
pub struct BanArgs {
    /// Address to ban (IPv4 or IPv6).
    pub addr: IpAddr,
    /// How long: seconds, or "10m", "1h", "7d". Leave out (or "forever", or -1) to ban until
    /// `capyknock unban`. Longer than a year is shortened to a year.
    #[arg(allow_negative_numbers = true)]
    pub duration: Option<String>,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// `capyknock unban`.
#[derive(Debug, Clone, clap::Args)]
pub struct UnbanArgs {
    /// Address to unban.
    pub addr: IpAddr,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// `capyknock status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print the daemon's JSON snapshot (fields documented in docs/OPERATIONS.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// `capyknock reload`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Why a server-side command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The daemon failed.
    #[error("the daemon stopped")]
    Daemon(#[source] super::daemon::DaemonError),
    /// The daemon could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Not available on this operating system.
    #[error("{0} is only available on Linux for now")]
    Unsupported(&'static str),
}

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: an unexpected error (the daemon failed, the runtime could not start).
pub const EXIT_ERROR: u8 = 1;
/// Exit status: usage or configuration (bad arguments, an invalid or unprotected config).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the daemon could not be reached (not running, another socket, no permission).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: the daemon refused the request (not banned, a ban of this host, reload refused).
pub const EXIT_REFUSED: u8 = 4;

impl CliError {
    /// The process exit status for this error, documented in docs/OPERATIONS.md ("Exit status")
    /// so scripts and fail2ban can tell a refused request from a daemon that is down.
    #[must_use]
    pub const fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => EXIT_USAGE,
            CliError::Client(_) => EXIT_UNREACHABLE,
            CliError::Refused(_) => EXIT_REFUSED,
            CliError::Daemon(_) | CliError::Runtime(_) | CliError::Unsupported(_) => EXIT_ERROR,
        }
    }
}

/// `capyknock server`: runs the daemon in the foreground until SIGTERM/SIGINT (Windows: Ctrl-C,
/// Ctrl-Break or closing the console).
pub fn server(args: &ServerArgs) -> Result<(), CliError> {
    server_until(args, std::future::pending(), || {})
}

/// [`server`], also stopping cleanly when `stop` completes (the Windows service's stop), and
/// calling `ready` once the daemon is ready (where systemd gets READY=1).
pub fn server_until(
    args: &ServerArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), CliError> {
    let builder = &mut tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).thread_name("capyknock");
    // Capabilities are per thread: the workers, started before the daemon drops its
    // privileges, drop theirs when they next wake up (server::privsep).
    #[cfg(target_os = "linux")]
    builder
        .on_thread_start(super::privsep::sandbox::catch_up)
        .on_thread_unpark(super::privsep::sandbox::catch_up);
    let runtime = builder.enable_all().build().map_err(CliError::Runtime)?;
    let opts = super::daemon::Options {
        config: args.config.clone(),
        ifaces: args.ifaces.clone(),
        capture: args.capture,
        firewall: args.firewall,
    };
    runtime
        .block_on(super::daemon::run_until(opts, stop, ready))
        .map_err(|err| match err {
            // A config that cannot be used is the admin's to fix, not a daemon failure.
            super::daemon::DaemonError::Config(err) => CliError::Config(err),
            err => CliError::Daemon(err),
        })
}

/// `capyknock check-config`: validates a configuration and prints what it sets up.
pub fn check_config(args: &CheckConfigArgs) -> Result<(), CliError> {
    let s = config::load(&args.path)?;
    #[cfg(target_os = "linux")]
    if let Some(group) = &s.control_group
        && nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .is_none()
    {
        return Err(CliError::Usage(format!(
            "{}: control_group {group:?} does not exist: create it (`groupadd --system {group}`) \
             or remove control_group",
            args.path.display()
        )));
    }
    s.users_table()
        .map_err(|e| CliError::Usage(format!("{}: {}", args.path.display(), ErrorChain(&e))))?;
    // A named interface must exist here, as the daemon requires at start (patterns need not
    // match anything yet).
    #[cfg(target_os = "linux")]
    crate::capture::ifaces::check_named(&s.interfaces).map_err(|e| {
        CliError::Usage(format!(
            "{}: interfaces: {e}: fix the name, or use a pattern such as \"eth*\" for an \
             interface that appears later",
            args.path.display()
        ))
    })?;
    // Users from the store: the daemon refuses to start without a readable, private seal key.
    if let Some(path) = s.cluster.as_ref().and_then(|c| c.seal_key.as_deref()) {
        super::cluster::users::SealKey::read(path)
            .map_err(|e| CliError::Usage(format!("{}: {}", args.path.display(), ErrorChain(&e))))?;
    }
    print!("{}", check_report(&args.path, &s));
    Ok(())
}

/// What `check-config` prints for a valid config: what it sets up, what the firewall protects
/// and the warnings about protected ports.
fn check_report(path: &std::path::Path, s: &config::Settings) -> String {
    use std::fmt::Write as _;
    let ports: Vec<String> = s
        .protected_ports()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", path.display());
    let _ = writeln!(
        out,
        "  knock ports:     {}",
        crate::ports::knock_ports_text(&s.knock_ports)
    );
    let _ = writeln!(
        out,
        "  capture:         {} on {}",
        s.capture.as_str(),
        if s.interfaces.is_empty() {
            "every interface that is up, and those that appear later (except loopback)".to_owned()
        } else {
            format!(
                "{}, and those of them that appear later",
                s.interfaces.join(", ")
            )
        }
    );
    let _ = writeln!(out, "  firewall:        {}", s.firewall.backend);
    let _ = writeln!(
        out,
        "  protected ports: {} ({})",
        if ports.is_empty() {
            "none".to_owned()
        } else {
            ports.join(", ")
        },
        if s.protect.is_some() {
            "[server] protect"
        } else {
            "the users' ports: no [server] protect"
        }
    );
    match s.cluster.as_ref().and_then(|c| c.seal_key.as_ref()) {
        Some(seal) => {
            let _ = writeln!(
                out,
                "  users:           {} in this file, and those of the fleet store \
                 (users_from_store, seal key {})",
                s.users.len(),
                seal.display()
            );
        }
        None => {
            let _ = writeln!(out, "  users:           {}", s.users.len());
        }
    }
    let _ = writeln!(out, "  state directory: {}", s.state_dir.display());
    let _ = writeln!(out, "  control socket:  {}", s.control_socket.display());
    let _ = writeln!(
        out,
        "  metrics:         {}",
        s.metrics_listen
            .as_ref()
            .map_or_else(|| "off".to_owned(), ToString::to_string)
    );
    for w in s.protection_warnings() {
        let _ = writeln!(out, "  warning: {w}");
    }
    out
}

/// `capyknock ban ADDR [DURATION]`.
pub fn ban(args: &BanArgs) -> Result<(), CliError> {
    let duration = match args.duration.as_deref() {
        None | Some("forever" | "-1") => None,
        Some(d) => Some(ban_duration(d)?),
    };
    let reply = ask(
        &args.socket,
        &Request::Ban {
            addr: args.addr,
            duration_secs: duration.map(|d| d.as_secs()),
        },
    )?;
    println!("{reply}");
    Ok(())
}

/// `capyknock unban ADDR`.
pub fn unban(args: &UnbanArgs) -> Result<(), CliError> {
    println!(
        "{}",
        ask(&args.socket, &Request::Unban { addr: args.addr })?
    );
    Ok(())
}

/// `capyknock reload`.
pub fn reload(args: &ReloadArgs) -> Result<(), CliError> {
    println!("{}", ask(&args.socket, &Request::Reload {})?);
    Ok(())
}

/// `capyknock status [--json]`.
pub fn status(args: &StatusArgs) -> Result<(), CliError> {
    let response = control::request(&args.socket.path(), &Request::Status {})?;
    let (true, Some(status)) = (response.ok, response.status) else {
        return Err(CliError::Refused(
            response
                .error
                .unwrap_or_else(|| "the daemon sent no status".into()),
        ));
    };
    if args.json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| CliError::Refused(format!("cannot print the status: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", status::render_human(&status));
    }
    Ok(())
}

/// Sends `req`; the daemon's message on success, its error as [`CliError::Refused`].
fn ask(socket: &SocketArgs, req: &Request) -> Result<String, CliError> {
    let response = control::request(&socket.path(), req)?;
    if response.ok {
        Ok(response.message.unwrap_or_else(|| "ok".into()))
    } else {
        Err(CliError::Refused(
            response.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// Parses a ban duration, shortening one longer than [`MAX_BAN`] (fail2ban's growing ban times
/// must never make a ban fail).
fn ban_duration(text: &str) -> Result<Duration, CliError> {
    let long = text
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| humantime::parse_duration(text).ok())
        .filter(|d| *d > MAX_BAN);
    if long.is_some() {
        eprintln!(
            "note: bans last at most {}; shortened",
            humantime::format_duration(MAX_BAN)
        );
        return Ok(MAX_BAN);
    }
    control::parse_ban_duration(text).map_err(CliError::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_unreachable_from_refused() {
        let codes = [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_USAGE,
            EXIT_UNREACHABLE,
            EXIT_REFUSED,
        ];
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(CliError::Refused("x".into()).exit_code(), EXIT_REFUSED);
        let down = CliError::Client(control::ClientError::NotRunning("/s".into()));
        assert_eq!(down.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(CliError::Unsupported("x").exit_code(), EXIT_ERROR);
    }

    #[test]
    fn ban_durations_from_fail2ban() {
        assert_eq!(ban_duration("600").unwrap(), Duration::from_mins(10));
        assert_eq!(ban_duration("1h").unwrap(), Duration::from_hours(1));
        assert_eq!(ban_duration("99999999999").unwrap(), MAX_BAN);
        assert!(ban_duration("0").is_err());
        assert!(ban_duration("soon").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        enum T {
            Ban(BanArgs),
            Server(ServerArgs),
        }
        let T::Ban(b) =
            T::try_parse_from(["x", "ban", "192.0.2.1", "-1", "--socket", "/s"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(b.duration.as_deref(), Some("-1"));
        assert_eq!(b.socket.path(), PathBuf::from("/s"));
        let T::Server(s) = T::try_parse_from([
            "x",
            "server",
            "--config",
            "/c.toml",
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--capture",
            "udp",
            "--firewall",
            "none",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(s.ifaces, ["eth0", "eth1"]);
        assert_eq!(s.capture, Some(CaptureMode::Udp));
        assert_eq!(s.firewall, Some(FirewallKind::None));
        assert!(T::try_parse_from(["x", "server", "--capture", "ebpf"]).is_err());
        for (text, mode) in [
            ("auto", CaptureMode::Auto),
            ("xdp", CaptureMode::Xdp),
            ("pcap", CaptureMode::Pcap),
            ("udp", CaptureMode::Udp),
        ] {
            let T::Server(s) = T::try_parse_from(["x", "server", "--capture", text]).unwrap()
            else {
                panic!()
            };
            assert_eq!(s.capture, Some(mode));
        }
    }

    #[test]
    fn check_config_shows_what_is_protected() {
        const USER: &str = "[[user]]\nid = \"00112233445566778899aabbccddeeff\"\n\
                            nickname = \"alice\"\n\
                            key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
                            totp_secret = \"AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT\"\n\
                            ports = [\"tcp/2222\"]\n";
        let path = std::path::Path::new("/etc/capyknock/server.toml");
        let s = config::parse(path, USER).unwrap();
        let out = check_report(path, &s);
        assert!(
            out.contains("protected ports: tcp/2222 (the users' ports: no [server] protect)"),
            "{out}"
        );
        assert!(out.contains("warning: no `protect` list"), "{out}");
        assert!(out.contains("knock ports:     udp/62201\n"), "{out}");
        let s = config::parse(
            path,
            &format!("[server]\nprotect = [\"tcp/22\", \"tcp/2222\"]\n{USER}"),
        )
        .unwrap();
        let out = check_report(path, &s);
        assert!(
            out.contains("protected ports: tcp/22, tcp/2222 ([server] protect)"),
            "{out}"
        );
        assert!(out.contains("warning: no user may open tcp/22:"), "{out}");
        let out = check_report(path, &config::parse(path, "").unwrap());
        assert!(out.contains("protected ports: none ("), "{out}");
        assert!(
            out.contains("warning: no users and no `protect` list"),
            "{out}"
        );
    }

    /// `check-config` reads the seal key as the daemon does: missing or readable by others is
    /// a problem, with the fix.
    #[cfg(unix)]
    #[test]
    fn check_config_checks_the_seal_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = (dir.path().join("server.toml"), dir.path().join("seal.key"));
        let text = format!(
            "[server]\ninterfaces = \"all\"\n[cluster]\nendpoints = [\"http://e:2379\"]\n\
             node = \"a\"\nusers_from_store = true\nseal_key = \"{}\"\n",
            key.display()
        );
        crate::private_file::write_atomic(&path, text.as_bytes()).unwrap();
        let args = CheckConfigArgs { path: path.clone() };
        let err = check_config(&args).unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("keygen --cluster"),
            "{err}"
        );
        super::super::cluster::users::SealKey::create(&key).unwrap();
        check_config(&args).unwrap();
        let report = check_report(&path, &config::load(&path).unwrap());
        assert!(report.contains("and those of the fleet store"), "{report}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_config(&args).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
