//! `capyknock keygen`: creates a user (id, key, TOTP secret) for the server and client configs.
//!
//! One run sets a user up completely: the random secrets (from the protocol's generators), a
//! `[[user]]` entry appended to the server config (created complete and commented when missing,
//! by [`crate::server::config::add_user`]), a `[profile.NAME]` appended to the client config
//! ([`crate::client::config::add_profile`]), and the `otpauth://` URI with its QR code for the
//! user's authenticator app. Both files are written atomically with mode 0600 and never lose
//! other entries. Missing flags are asked for on a terminal; without one, keygen says which
//! flags to pass.
//!
//! Fleet mode (`--cluster CONFIG`, docs/FLEET.md "Users from the store"): the same user, the
//! same client profile and QR code, but the server side is a sealed record in etcd
//! (`server::cluster::user_admin`) that every node with `users_from_store` picks up without a
//! reload; `--change NICKNAME` and `--remove NICKNAME` change and remove such users.

pub mod otpauth;
pub mod qr;

use std::{
    fmt::Write as _,
    io::{BufRead as _, IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    client::config::{self as client_config, ClientConfigError, CodeSource, NewProfile, Profile},
    ports::{PortSpec, Protocol},
    protocol::users::{AllowIp, TotpMode, User},
    protocol::{
        keys::{KeyError, TotpSecret, UserId, UserKey},
        payload::MAX_PORTS,
    },
    server::config::{self as server_config, AddUserError},
};

/// Create a user: random id, knock key and TOTP secret, appended to the server config and the
/// client config, with a QR code for the authenticator app.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeygenArgs {
    /// The user's name in logs and status (letters, digits, '.', '_', '@', '-'; at most 32).
    #[arg(long, value_name = "NAME")]
    pub nickname: Option<String>,

    /// Host name or address clients knock on (written to the client profile).
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,

    /// Ports the user may open: `22`, `tcp/22` or `udp/51820`, comma-separated.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub ports: Vec<PortSpec>,

    /// UDP knock port [default: the server config's first knock port, else 62201].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub knock_port: Option<u16>,

    /// Server config to append the user to (created if missing).
    #[arg(long, value_name = "PATH", default_value_os_t = server_config::default_config_path())]
    pub server_config: PathBuf,

    /// Client config to append the profile to (created if missing) [default: a file of its own
    /// for this user next to the server config, `clients/NICKNAME.toml` in a 0700 directory,
    /// to hand over and delete; your own ~/.config/capyknock/client.toml only when you name it].
    #[arg(long, value_name = "PATH")]
    pub client_config: Option<PathBuf>,

    /// Name of the client profile [default: the server's host name].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// prompt: a person types codes from an app; derived: machine-to-machine, the profile
    /// stores the TOTP secret.
    #[arg(long, value_enum, default_value_t = TotpMode::Prompt)]
    pub totp_mode: TotpMode,

    /// How long a knock opens the ports for this user [default: the server's `default_access`].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub access: Option<Duration>,

    /// Also write the QR code to this PNG file (mode 0600: it holds the TOTP secret).
    #[arg(long, value_name = "PATH")]
    pub qr_png: Option<PathBuf>,

    /// Do not draw the QR code in the terminal.
    #[arg(long)]
    pub no_qr: bool,

    /// Fleet mode: put the user into the fleet store (etcd) named by this server config's
    /// `[cluster]` section (which needs `users_from_store = true` and `seal_key`) instead of
    /// appending it to a config file; every node picks it up without a reload. The first run
    /// creates the seal key file when the store has no user yet: copy it to every node.
    #[arg(long, value_name = "CONFIG", conflicts_with = "server_config")]
    pub cluster: Option<PathBuf>,

    /// With --cluster: remove this user from the fleet store (its knocks are refused on every
    /// node at once).
    #[arg(
        long,
        value_name = "NICKNAME",
        requires = "cluster",
        conflicts_with = "change"
    )]
    pub remove: Option<String>,

    /// With --cluster: change this store user's --ports and/or --access (id and secrets stay,
    /// so its client profile keeps working).
    #[arg(long, value_name = "NICKNAME", requires = "cluster")]
    pub change: Option<String>,
}

/// Why keygen failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A required value is missing and there is no terminal to ask on.
    #[error("missing {0}: pass it on the command line (no terminal to ask on)")]
    Missing(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Reading an answer failed.
    #[error("cannot read the answer")]
    Ask(#[source] std::io::Error),
    /// The server config already exists with other knock ports.
    #[error(
        "--knock-port {wanted} is not a knock port of {} (it listens on {existing:?}): leave \
         --knock-port out, or add the port to knock_ports there first",
        path.display()
    )]
    KnockPortMismatch {
        /// The config.
        path: PathBuf,
        /// Asked for.
        wanted: u16,
        /// Configured.
        existing: Vec<u16>,
    },
    /// The existing server config could not be read.
    #[error(transparent)]
    ServerConfigRead(#[from] server_config::ConfigError),
    /// Adding to the server config failed.
    #[error(transparent)]
    Server(#[from] AddUserError),
    /// The client config failed.
    #[error(transparent)]
    Client(#[from] ClientConfigError),
    /// The client profile was not written after the server config was.
    #[error(
        "user {nickname:?} was added to {} but the client profile was not written: write it by \
         hand (docs/CLIENT.md) or remove the user's [[user]] entry and run keygen again",
        server.display()
    )]
    ClientAfterServer {
        /// The nickname.
        nickname: String,
        /// The server config.
        server: PathBuf,
        /// Why.
        #[source]
        source: Box<ClientConfigError>,
    },
    /// Random generation failed.
    #[error(transparent)]
    Random(#[from] KeyError),
    /// The QR code failed.
    #[error(transparent)]
    Qr(#[from] qr::QrError),
    /// The fleet store refused or could not be reached (`--cluster`).
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Store(#[from] crate::server::cluster::user_admin::AdminError),
    /// Writing the PNG failed.
    #[error("cannot write {}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Everything keygen needs, checked.
#[derive(Debug, Clone)]
struct Plan {
    nickname: String,
    server: String,
    ports: Vec<PortSpec>,
    knock_port: u16,
    server_config: PathBuf,
    client_config: PathBuf,
    profile: String,
    mode: TotpMode,
    access: Duration,
}

/// What keygen produced (the caller prints it; tests read it).
#[derive(Debug, Clone)]
pub struct Created {
    /// The new user's id.
    pub user_id: UserId,
    /// The nickname.
    pub nickname: String,
    /// The server config written.
    pub server_config: PathBuf,
    /// The client config written.
    pub client_config: PathBuf,
    /// The profile's name.
    pub profile: String,
    /// The knock port.
    pub knock_port: u16,
    /// Allowed ports.
    pub ports: Vec<PortSpec>,
    /// Prompt or derived.
    pub mode: TotpMode,
    /// The `otpauth://` URI (holds the TOTP secret).
    pub otpauth_uri: String,
    /// `--cluster`: the record's key in the fleet store (the server config was not written).
    pub store_key: Option<String>,
    /// `--cluster`: the seal key file, when this run created it.
    pub seal_key_created: Option<PathBuf>,
}

/// Runs `capyknock keygen`: writes both files (or, with `--cluster`, the store's record and the
/// client profile) and prints the result, QR code included; or changes or removes a store user.
pub fn run(args: &KeygenArgs) -> Result<(), KeygenError> {
    if let Some(config) = &args.cluster {
        return run_cluster(args, config);
    }
    let interactive = std::io::stdin().is_terminal();
    let plan = plan(args, &mut |question, default| {
        if interactive {
            ask(question, default)
        } else {
            Err(KeygenError::Missing(question.to_owned()))
        }
    })?;
    let created = create(&plan)?;
    print_result(&created, args)?;
    Ok(())
}

/// `keygen --cluster CONFIG`: fleet mode runs on Linux only.
#[cfg(not(target_os = "linux"))]
fn run_cluster(_args: &KeygenArgs, _config: &Path) -> Result<(), KeygenError> {
    Err(KeygenError::Invalid(
        "--cluster: fleet mode runs on Linux only for now".into(),
    ))
}

/// `keygen --cluster CONFIG`: adds (or, with `--change`/`--remove`, changes or removes) a user
/// in the fleet store of CONFIG's `[cluster]`.
#[cfg(target_os = "linux")]
fn run_cluster(args: &KeygenArgs, config: &Path) -> Result<(), KeygenError> {
    use crate::server::cluster::user_admin::{self, Target};
    let settings = server_config::load(config)?;
    let target = Target::of(&settings).map_err(KeygenError::Store)?;
    if let Some(nickname) = &args.remove {
        let (id, key) = user_admin::remove(&target, nickname)?;
        println!(
            "Removed user {nickname} (id {id}) from the fleet store ({key})\n  every node with \
             users_from_store refuses its knocks from now on, no reload needed"
        );
        return Ok(());
    }
    if let Some(nickname) = &args.change {
        let mut ports = args.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > MAX_PORTS {
            return Err(KeygenError::Invalid(format!(
                "a knock can ask for at most {MAX_PORTS} ports; --ports lists {}",
                ports.len()
            )));
        }
        let ports = (!ports.is_empty()).then_some(ports);
        let (old, new) = user_admin::change(&target, nickname, ports, args.access)?;
        println!(
            "Changed user {} (id {}) in the fleet store: {}\n  every node with \
             users_from_store applies it, no reload needed (the client profile stays valid; \
             its ports list only says what a knock asks for)",
            new.nickname,
            new.id,
            crate::server::cluster::users::describe_change(&old, &new)
        );
        return Ok(());
    }
    let mut args = args.clone();
    config.clone_into(&mut args.server_config);
    let interactive = std::io::stdin().is_terminal();
    let plan = plan(&args, &mut |question, default| {
        if interactive {
            ask(question, default)
        } else {
            Err(KeygenError::Missing(question.to_owned()))
        }
    })?;
    let (new_user, totp) = new_user(&plan)?;
    let added = user_admin::add(&target, &new_user)?;
    let mut created = write_profile(&plan, &new_user, &totp)?;
    created.store_key = Some(added.key);
    created.seal_key_created = added.seal_key_created;
    print_result(&created, &args)?;
    Ok(())
}

/// Asks for a missing value: `(what, default)` -> the answer.
type Ask<'a> = dyn FnMut(&str, Option<&str>) -> Result<String, KeygenError> + 'a;

/// Checks the arguments, asking `ask(what, default)` for each missing value.
fn plan(args: &KeygenArgs, ask: &mut Ask<'_>) -> Result<Plan, KeygenError> {
    let nickname = match &args.nickname {
        Some(n) => n.clone(),
        None => ask("--nickname (the user's name in logs, e.g. alice)", None)?,
    };
    crate::conf::check_nickname(&nickname).map_err(KeygenError::Invalid)?;
    let server = match &args.server {
        Some(s) => s.clone(),
        None => ask(
            "--server (host name or address clients knock on, e.g. work.example.com)",
            None,
        )?,
    };
    client_config::check_server(&server).map_err(KeygenError::Invalid)?;
    let server = server
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut ports = args.ports.clone();
    if ports.is_empty() {
        let answer = ask(
            "--ports (comma-separated, e.g. 22,443 or udp/51820)",
            Some("22"),
        )?;
        for part in answer.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            ports.push(
                part.parse().map_err(|e: crate::ports::PortSpecError| {
                    KeygenError::Invalid(e.to_string())
                })?,
            );
        }
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Err(KeygenError::Invalid("--ports lists no port".into()));
    }
    if ports.len() > MAX_PORTS {
        return Err(KeygenError::Invalid(format!(
            "a knock can ask for at most {MAX_PORTS} ports; --ports lists {}",
            ports.len()
        )));
    }
    let (knock_port, default_access) = server_defaults(&args.server_config, args.knock_port)?;
    let client_config = args
        .client_config
        .clone()
        .unwrap_or_else(|| handover_path(&args.server_config, &nickname));
    let profile = args.profile.clone().unwrap_or_else(|| server.clone());
    client_config::check_profile_name(&profile)
        .map_err(|m| KeygenError::Invalid(format!("{m} (choose one with --profile NAME)")))?;
    // Refuse a taken profile name now, before the server config is touched.
    if let Some(text) = client_config::read_checked(&client_config)? {
        let existing = client_config::parse(&client_config, &text)?;
        if existing.profiles.iter().any(|p| p.name == profile) {
            return Err(ClientConfigError::ProfileExists {
                name: profile,
                path: client_config,
            }
            .into());
        }
    }
    Ok(Plan {
        nickname,
        server,
        ports,
        knock_port,
        server_config: args.server_config.clone(),
        client_config,
        profile,
        mode: args.totp_mode,
        access: args.access.unwrap_or(default_access),
    })
}

/// The knock port and the default access duration: the existing server config's (the port
/// checked against `--knock-port`), else the flag and the built-in defaults.
fn server_defaults(path: &Path, wanted: Option<u16>) -> Result<(u16, Duration), KeygenError> {
    if !path.exists() {
        return Ok((
            wanted.unwrap_or(capyknock_common::wire::DEFAULT_KNOCK_PORT),
            server_config::DEFAULT_ACCESS,
        ));
    }
    let settings = server_config::load(path)?;
    let first = settings
        .knock_ports
        .first()
        .copied()
        .unwrap_or(capyknock_common::wire::DEFAULT_KNOCK_PORT);
    match wanted {
        None => Ok((first, settings.default_access)),
        Some(p) if settings.knock_ports.contains(&p) => Ok((p, settings.default_access)),
        Some(p) => Err(KeygenError::KnockPortMismatch {
            path: path.to_owned(),
            wanted: p,
            existing: settings.knock_ports,
        }),
    }
}

/// Generates the secrets and writes both files.
fn create(plan: &Plan) -> Result<Created, KeygenError> {
    let (new_user, totp) = new_user(plan)?;
    server_config::add_user(&plan.server_config, &new_user, plan.knock_port)?;
    write_profile(plan, &new_user, &totp)
}

/// The new user, with fresh random secrets.
fn new_user(plan: &Plan) -> Result<(User, TotpSecret), KeygenError> {
    let totp = TotpSecret::random()?;
    Ok((
        User {
            id: UserId::random()?,
            nickname: plan.nickname.clone(),
            key: UserKey::random()?,
            totp: totp.clone(),
            totp_mode: plan.mode,
            ports: plan.ports.clone(),
            access: plan.access,
            allow_ip: AllowIp::Source,
        },
        totp,
    ))
}

/// Writes `new_user`'s client profile (after the server side has it).
fn write_profile(plan: &Plan, new_user: &User, totp: &TotpSecret) -> Result<Created, KeygenError> {
    let (user_id, key) = (new_user.id, new_user.key.clone());
    let account = format!("{}@{}", plan.nickname, plan.server);
    let new_profile = NewProfile {
        name: plan.profile.clone(),
        comment: format!("{account}, added by capyknock keygen"),
        profile: Profile {
            name: plan.profile.clone(),
            server: plan.server.clone(),
            knock_port: plan.knock_port,
            check_port: plan
                .ports
                .iter()
                .find(|p| p.protocol == Protocol::Tcp)
                .map(|p| p.port),
            ports: plan.ports.clone(),
            nickname: Some(plan.nickname.clone()),
            user_id,
            key,
            code: match plan.mode {
                TotpMode::Prompt => CodeSource::Prompt,
                TotpMode::Derived => CodeSource::Derived(totp.clone()),
            },
            allow_ip: None,
        },
    };
    client_config::add_profile(&plan.client_config, &new_profile).map_err(|source| {
        KeygenError::ClientAfterServer {
            nickname: plan.nickname.clone(),
            server: plan.server_config.clone(),
            source: Box::new(source),
        }
    })?;
    Ok(Created {
        user_id,
        nickname: plan.nickname.clone(),
        server_config: plan.server_config.clone(),
        client_config: plan.client_config.clone(),
        profile: plan.profile.clone(),
        knock_port: plan.knock_port,
        ports: plan.ports.clone(),
        mode: plan.mode,
        otpauth_uri: otpauth::uri(&account, totp),
        store_key: None,
        seal_key_created: None,
    })
}

/// Where a user's client profile goes when `--client-config` is not given: a file of its own in
/// `clients/` next to the server config (`/etc/capyknock/clients/alice.toml`), never the
/// admin's own client config, so one user's key does not end up among the admin's profiles.
/// The directory is created 0700 like every directory of private files.
#[must_use]
pub fn handover_path(server_config: &Path, nickname: &str) -> PathBuf {
    server_config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .join("clients")
        .join(format!("{nickname}.toml"))
}

/// Prints what was done, the URI and the QR code (stdout), and writes the PNG.
fn print_result(c: &Created, args: &KeygenArgs) -> Result<(), KeygenError> {
    let ports: Vec<String> = c.ports.iter().map(ToString::to_string).collect();
    let mut out = String::new();
    if let Some(key) = &c.store_key {
        let _ = write!(
            out,
            "Added user {} (id {}) to the fleet store ({key})\n  ports {}, knock port \
             udp/{}\n  every node with users_from_store picks it up, no reload needed\n",
            c.nickname,
            c.user_id,
            ports.join(", "),
            c.knock_port,
        );
    } else {
        let _ = write!(
            out,
            "Added user {} (id {}) to {}\n  ports {}, knock port udp/{}\n  a running server \
             picks it up with `capyknock reload`\n",
            c.nickname,
            c.user_id,
            c.server_config.display(),
            ports.join(", "),
            c.knock_port,
        );
    }
    if let Some(path) = &c.seal_key_created {
        let _ = writeln!(
            out,
            "Created the fleet's seal key {} (mode 0600): copy it to the same path on every \
             node with users_from_store (mode 0600, root's), e.g. `ssh NODE 'umask 077; cat > \
             {}' < {}`; keep it out of etcd and its backups",
            path.display(),
            path.display(),
            path.display()
        );
    }
    let _ = write!(
        out,
        "Wrote client profile {:?} to {}\n  it holds {}'s secret key: give it to them over a \
         private channel (their file: ~/.config/capyknock/client.toml, mode 0600), then delete \
         it here\n",
        c.profile,
        c.client_config.display(),
        c.nickname,
    );
    match c.mode {
        TotpMode::Prompt => {
            let _ = write!(
                out,
                "\nScan this code with {}'s authenticator app (any TOTP app: Google or Microsoft \
             Authenticator, ...), or type the URI into it:\n",
                c.nickname
            );
        }
        TotpMode::Derived => out.push_str(
            "\nMachine profile: the client computes codes from the secret stored in the profile; \
             no authenticator app is needed, and the secret is printed nowhere.\n",
        ),
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(out.as_bytes());
    if c.mode == TotpMode::Prompt {
        if !args.no_qr {
            let ansi = crate::tracing_setup::colours_on(
                stdout.is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            let text = qr::terminal(&c.otpauth_uri, ansi)?;
            let _ = lock.write_all(text.as_bytes());
        }
        let _ = writeln!(lock, "{}", c.otpauth_uri);
    }
    if let Some(path) = &args.qr_png {
        let png = qr::png(&c.otpauth_uri)?;
        crate::private_file::write_private(path, &png).map_err(|source| KeygenError::Png {
            path: path.clone(),
            source,
        })?;
        let _ = writeln!(lock, "QR code written to {} (mode 0600)", path.display());
    }
    let _ = lock.flush();
    Ok(())
}

/// Asks on the terminal (stderr for the question, stdin for the answer).
fn ask(question: &str, default: Option<&str>) -> Result<String, KeygenError> {
    let mut stderr = std::io::stderr();
    match default {
        Some(d) => {
            let _ = write!(stderr, "{question} [{d}]: ");
        }
        None => {
            let _ = write!(stderr, "{question}: ");
        }
    }
    let _ = stderr.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(KeygenError::Ask)?;
    let answer = line.trim();
    match (answer.is_empty(), default) {
        (true, Some(d)) => Ok(d.to_owned()),
        (true, None) => Err(KeygenError::Missing(question.to_owned())),
        (false, _) => Ok(answer.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> KeygenArgs {
        KeygenArgs {
            nickname: Some("alice".into()),
            server: Some("work.example.com".into()),
            ports: vec![PortSpec::tcp(443), PortSpec::tcp(22)],
            knock_port: Some(4000),
            server_config: dir.join("server.toml"),
            client_config: Some(dir.join("client.toml")),
            profile: None,
            totp_mode: TotpMode::Prompt,
            access: None,
            qr_png: None,
            no_qr: true,
            cluster: None,
            remove: None,
            change: None,
        }
    }

    fn no_ask(q: &str, _: Option<&str>) -> Result<String, KeygenError> {
        Err(KeygenError::Missing(q.to_owned()))
    }

    fn create_with(a: &KeygenArgs) -> Result<Created, KeygenError> {
        create(&plan(a, &mut no_ask)?)
    }

    #[test]
    fn creates_both_files_that_agree() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        let c = create_with(&a).unwrap();
        assert_eq!(c.profile, "work.example.com");
        assert_eq!(c.ports, vec![PortSpec::tcp(22), PortSpec::tcp(443)]);
        let server = server_config::load(&a.server_config).unwrap();
        assert_eq!(server.knock_ports, vec![4000]);
        let [user] = server.users.as_slice() else {
            panic!()
        };
        let client = client_config::load(a.client_config.as_deref().unwrap()).unwrap();
        let profile = client.select(Some("work.example.com")).unwrap();
        assert_eq!(user.id, profile.user_id);
        assert_eq!(user.key, profile.key);
        assert_eq!(user.access, server_config::DEFAULT_ACCESS);
        assert_eq!(user.nickname, "alice");
        assert_eq!(user.ports, c.ports);
        assert_eq!(profile.knock_port, 4000);
        assert_eq!(profile.check_port, Some(22));
        assert_eq!(profile.code, CodeSource::Prompt);
        // The URI carries the server's TOTP secret.
        let secret = user.totp.to_base32_secret();
        assert!(
            c.otpauth_uri.contains(&format!("secret={secret}&")),
            "{}",
            c.otpauth_uri
        );
        assert!(
            c.otpauth_uri
                .starts_with("otpauth://totp/capyknock:alice@work.example.com?")
        );
        #[cfg(unix)]
        for path in [&a.server_config, a.client_config.as_ref().unwrap()] {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn second_user_appends_and_inherits_the_knock_port() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        create_with(&a).unwrap();
        let server_before = std::fs::read_to_string(&a.server_config).unwrap();
        let client_before = std::fs::read_to_string(a.client_config.as_ref().unwrap()).unwrap();
        let mut b = args(dir.path());
        b.nickname = Some("backup".into());
        b.profile = Some("backup-job".into());
        b.knock_port = None;
        b.totp_mode = TotpMode::Derived;
        b.access = Some(Duration::from_mins(1));
        let c = create_with(&b).unwrap();
        assert_eq!(c.knock_port, 4000);
        let server_after = std::fs::read_to_string(&a.server_config).unwrap();
        assert!(server_after.starts_with(&server_before));
        let client_after = std::fs::read_to_string(a.client_config.as_ref().unwrap()).unwrap();
        assert!(client_after.starts_with(&client_before));
        let server = server_config::load(&a.server_config).unwrap();
        assert_eq!(server.users.len(), 2);
        assert_eq!(server.users[1].totp_mode, TotpMode::Derived);
        assert_eq!(server.users[1].access, Duration::from_mins(1));
        let client = client_config::load(a.client_config.as_deref().unwrap()).unwrap();
        let p = client.select(Some("backup-job")).unwrap();
        let CodeSource::Derived(secret) = &p.code else {
            panic!("not derived")
        };
        assert_eq!(secret, &server.users[1].totp);
    }

    #[test]
    fn refusals_leave_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        create_with(&a).unwrap();
        let server_before = std::fs::read_to_string(&a.server_config).unwrap();
        // Same profile name: refused before the server config is touched.
        let mut b = args(dir.path());
        b.nickname = Some("bob".into());
        b.knock_port = None;
        let err = create_with(&b).unwrap_err();
        assert!(err.to_string().contains("--profile"), "{err}");
        // Same nickname: the server config refuses it.
        let mut c = args(dir.path());
        c.profile = Some("other".into());
        c.knock_port = Some(5000);
        assert!(matches!(
            create_with(&c),
            Err(KeygenError::KnockPortMismatch { .. })
        ));
        c.knock_port = None;
        let err = create_with(&c).unwrap_err();
        assert!(matches!(err, KeygenError::Server(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(&a.server_config).unwrap(),
            server_before
        );
        // Bad values.
        for (field, value) in [
            ("nickname", "has space"),
            ("server", "a b"),
            ("profile", "x/y"),
        ] {
            let mut d = args(dir.path());
            d.knock_port = None;
            match field {
                "nickname" => d.nickname = Some(value.into()),
                "server" => d.server = Some(value.into()),
                _ => d.profile = Some(value.into()),
            }
            assert!(
                matches!(create_with(&d), Err(KeygenError::Invalid(_))),
                "{field}"
            );
        }
    }

    #[test]
    fn missing_values_are_asked_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.nickname = None;
        a.ports = Vec::new();
        let err = plan(&a, &mut no_ask).unwrap_err();
        assert!(err.to_string().starts_with("missing --nickname"), "{err}");
        let mut asked = Vec::new();
        let p = plan(&a, &mut |q, d| {
            asked.push(q.to_owned());
            Ok(if q.starts_with("--nickname") {
                "carol".into()
            } else {
                d.unwrap().into()
            })
        })
        .unwrap();
        assert_eq!(p.nickname, "carol");
        assert_eq!(p.ports, vec![PortSpec::tcp(22)]);
        assert_eq!(asked.len(), 2);
    }

    #[test]
    fn ipv6_server_is_stored_bare() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.server = Some("[2001:db8::1]".into());
        let c = create_with(&a).unwrap();
        assert_eq!(c.profile, "2001:db8::1");
        assert!(c.otpauth_uri.contains("alice@2001%3Adb8%3A%3A1?"));
    }
}
